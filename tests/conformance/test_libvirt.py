"""The lifecycle catalogue against a real libvirt daemon driving real qemu.

Skipped, with one line saying how to enable them, when no daemon answers on
qemu:///system (``scripts/libvirtd-service start`` as root sets one up; CI
does). Every lifecycle case the adapter can run must pass or be listed, with
its evidence, in conformance/expectations/libvirt-9.0.json; the same cases
pass on the reference under libvirt-modern (test_lifecycle_catalogue.py), so
the two agree wherever both run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.adapters.base import AdapterError
from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import Case
from conformance.expectations import load_expectations
from conformance.runner import Runner, Status
from images.build import build
from images.spec import linear
from tests.conformance.test_lifecycle_catalogue import lifecycle_cases

EXPECTATIONS = Path(__file__).parents[2] / "conformance" / "expectations" / "libvirt-9.0.json"
ENABLE = "no libvirt daemon on qemu:///system; enable with: sudo scripts/libvirtd-service start"


@pytest.fixture(scope="module")
def libvirt_adapter() -> Iterator[Any]:
    try:
        from conformance.adapters.libvirt import LibvirtAdapter

        adapter = LibvirtAdapter()
    except AdapterError:
        pytest.skip(ENABLE)
    yield adapter
    adapter.close()


KNOWN = load_expectations(EXPECTATIONS)


@pytest.mark.parametrize("case", lifecycle_cases(), ids=lambda case: case.id)
def test_lifecycle_case_against_libvirt(libvirt_adapter: Any, case: Case) -> None:
    runner = Runner(libvirt_adapter, libvirt_adapter.info.profile)
    missing = runner.missing_capabilities(case)
    if missing:
        pytest.skip("libvirt cannot " + ", ".join(missing))
    result = runner.run(case)
    if case.id in KNOWN:
        assert result.status is Status.FAILED, f"{case.id} is listed as differing but passed"
        pytest.xfail(KNOWN[case.id].reason)
    assert result.status is Status.PASSED, result.message


def test_every_known_failure_names_a_lifecycle_case() -> None:
    ids = {case.id for case in lifecycle_cases()}
    assert set(KNOWN) <= ids


def _chain_shape(answer: dict[str, Any]) -> tuple[Any, ...]:
    layers = answer.get("chain") or []
    return tuple((layer["filename"], layer["format"]) for layer in layers), answer.get("terminated")


@pytest.mark.parametrize(
    "job",
    [
        {"op": "block-pull"},
        {"op": "block-commit", "top": "$DIR/layer-1.qcow2", "base": "$DIR/layer-2.qcow2"},
    ],
    ids=["pull", "commit"],
)
def test_daemon_restart_in_the_middle_of_a_job(
    libvirt_adapter: Any, job: dict[str, Any], tmp_path: Path
) -> None:
    """libvirtd is killed and started again while the job runs; after the reconnect the chain
    is the one before the job, and once the job ends it is what the job makes of it, as the
    reference under libvirt-modern says at every step."""
    if "daemon-restart" not in libvirt_adapter.info.capabilities:
        pytest.skip("the daemon was not started by scripts/libvirtd-service")
    reference = ReferenceAdapter("libvirt-modern")
    directories = {"libvirt": tmp_path / "libvirt", "reference": tmp_path / "reference"}
    for directory in directories.values():
        build(linear("job", ["qcow2", "qcow2", "qcow2"]), directory)
    steps: list[dict[str, Any]] = [
        {
            "op": "define",
            "domain": "guest",
            "disks": [{"target": "vda", "path": "$DIR/layer-0.qcow2", "format": "qcow2"}],
        },
        {"op": "start", "domain": "guest"},
        {**job, "domain": "guest", "target": "vda"},
        {"op": "daemon-restart"},
        {"op": "chain", "domain": "guest", "target": "vda"},
        {"op": "job-wait", "domain": "guest", "target": "vda"},
        {"op": "chain", "domain": "guest", "target": "vda"},
    ]
    answers: dict[str, list[dict[str, Any]]] = {}
    for name, adapter in (("libvirt", libvirt_adapter), ("reference", reference)):
        directory = directories[name]
        adapter.begin_case(directory)
        try:
            answers[name] = [
                adapter.call(step["op"], _substitute(step, directory)) for step in steps
            ]
        finally:
            adapter.end_case()
    for index, (got, want) in enumerate(zip(answers["libvirt"], answers["reference"], strict=True)):
        assert got["rc"] == want["rc"] == 0, (index, got, want)
        if "chain" in want:
            shape = _chain_shape(got)
            expected = _chain_shape(want)
            relative = tuple(
                (name.replace(str(directories["libvirt"]), "$DIR"), fmt) for name, fmt in shape[0]
            )
            expected_relative = tuple(
                (name.replace(str(directories["reference"]), "$DIR"), fmt)
                for name, fmt in expected[0]
            )
            assert (relative, shape[1]) == (expected_relative, expected[1]), index
    before, after = answers["libvirt"][4], answers["libvirt"][6]
    assert len(before["chain"]) == 3
    assert len(after["chain"]) == (1 if job["op"] == "block-pull" else 2)


def _substitute(step: dict[str, Any], directory: Path) -> dict[str, Any]:
    text = json.dumps({key: value for key, value in step.items() if key != "op"})
    return dict(json.loads(text.replace("$DIR", str(directory))))


def test_nothing_is_left_behind_when_cases_fail_or_hang(libvirt_adapter: Any) -> None:
    """A failing case and one whose implementation stops answering both end with their
    domains destroyed and undefined and their directories removed."""
    cases = {case.id: case for case in lifecycle_cases()}
    failing = _with_wrong_expectation(cases["lifecycle.block-pull.s18-full-pull"])
    hanging = cases["lifecycle.block-commit.s19-intermediate-commit"]
    runner = Runner(libvirt_adapter, libvirt_adapter.info.profile)
    original = libvirt_adapter._job_wait

    def stops_answering(args: dict[str, Any]) -> dict[str, Any]:
        raise AdapterError("no answer within the timeout")

    assert runner.run(failing).status is Status.FAILED
    libvirt_adapter._job_wait = stops_answering
    try:
        assert runner.run(hanging).status is Status.ERROR
    finally:
        libvirt_adapter._job_wait = original
    libvirt_adapter.wait_for_removals()
    left = [
        domain.name()
        for domain in libvirt_adapter._connection.listAllDomains()
        if domain.name().startswith(libvirt_adapter.prefix)
    ]
    assert left == []


def _with_wrong_expectation(case: Case) -> Case:
    steps = list(case.steps)
    last = dict(steps[-1])
    last["expect"] = {"default": {"error": "no-such-disk"}}
    steps[-1] = last
    return Case(
        case.id + "-made-to-fail",
        case.description,
        case.provenance,
        case.images,
        tuple(steps),
        case.extra_requirements,
        case.source,
    )


def test_a_crashed_runs_domains_are_removed_by_the_next_adapter(libvirt_adapter: Any) -> None:
    """Domains named for a process that no longer exists are leftovers of a crashed run."""
    from conformance.adapters.libvirt import NAME_PREFIX, LibvirtAdapter

    dead_pid = 2**22 + 7  # above Linux's default pid_max: no such process
    name = f"{NAME_PREFIX}{dead_pid}-abcdef-guest"
    connection = libvirt_adapter._connection
    connection.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
    other = LibvirtAdapter()
    try:
        names = [domain.name() for domain in connection.listAllDomains()]
        assert name not in names
    finally:
        other.close()


# -- what the adapter reads and writes, without a daemon ----------------------------------


def test_faults_change_files_and_a_replaced_file_may_return(
    libvirt_adapter: Any, tmp_path: Path
) -> None:
    """As the reference: replace brings back a deleted file, the others need it there."""
    source, image = tmp_path / "source.raw", tmp_path / "image.raw"
    source.write_bytes(b"new content")
    missing = {"fault": "delete", "path": str(image)}
    assert libvirt_adapter.call("fault", missing)["error"]["code"] == "file-missing"
    replace = {"fault": "replace", "path": str(image), "content_from": str(source)}
    assert libvirt_adapter.call("fault", replace) == {"rc": 0}
    assert image.read_bytes() == b"new content"
    itself = {"fault": "replace", "path": str(image), "content_from": str(image)}
    assert libvirt_adapter.call("fault", itself) == {"rc": 0}  # as the reference: no change
    assert image.read_bytes() == b"new content"
    rewrite = {"fault": "rewrite-header", "path": str(image), "backing": None}
    assert libvirt_adapter.call("fault", rewrite)["error"]["code"] == "unsupported"
    assert image.read_bytes() == b"new content"
    assert libvirt_adapter.call("fault", {"fault": "delete", "path": str(image)}) == {"rc": 0}
    assert not image.exists()
    assert libvirt_adapter.call("fault", rewrite)["error"]["code"] == "file-missing"


@pytest.mark.parametrize(
    ("message", "op", "args", "code"),
    [
        ("Domain not found: no domain with matching name 'x'", "start", {}, "no-such-domain"),
        (
            "Operation not supported: backing chains more than 200 layers deep are not "
            "supported for disk 'vda'",
            "snapshot",
            {},
            "too-deep",
        ),
        (
            "internal error: backing store for /d/a.qcow2 is self-referential or too deeply nested",
            "start",
            {},
            "too-deep",
        ),
        (
            "block copy still active: block job 'commit-vda-libvirt-1-format' not ready for "
            "pivot yet",
            "pivot",
            {},
            "job-not-ready",
        ),
        (
            "invalid argument: could not find backing store index '2' in chain for 'vda'",
            "block-commit",
            {"top": "vda[2]"},
            "top-not-found",
        ),
        (
            "invalid argument: could not find backing store index '3' in chain for 'vda'",
            "block-commit",
            {"top": "vda[1]", "base": "vda[3]"},
            "base-not-found",
        ),
        (
            "invalid argument: could not find image '/d/x' beneath '/d/top' in chain for 'vda'",
            "block-pull",
            {"base": "/d/x"},
            "base-not-found",
        ),
        (
            "missing destination file for disk vda: /d/copy.qcow2: No such file or directory",
            "block-copy",
            {},
            "file-missing",
        ),
        (
            "unsupported configuration: external destination file for disk vda already exists "
            "and is not a block device: /d/base.qcow2",
            "block-copy",
            {},
            "file-exists",
        ),
        (
            "unsupported configuration: unknown driver format value 'none'",
            "define",
            {},
            "unknown-format",
        ),
        (
            "unsupported configuration: disk source can be changed only in removable drives",
            "change-media",
            {},
            "not-removable",
        ),
        (
            "Operation not supported: can't change media while a block job is running on the "
            "device",
            "change-media",
            {},
            "job-active",
        ),
        (
            "Requested operation is not valid: cannot undefine transient domain",
            "undefine",
            {},
            "domain-transient",
        ),
        (
            "invalid argument: requested target 'vda' does not match target 'hdc'",
            "block-pull",
            {"base": "vda[2]"},
            "base-not-found",
        ),
        (
            "invalid argument: requested target 'vda' does not match target 'hdc'",
            "block-commit",
            {"top": "vda[1]", "base": None},
            "top-not-found",
        ),
        (
            "invalid argument: argument key 'device' must not have null value",
            "block-pull",
            {},
            "disk-has-no-source",
        ),
        (
            "internal error: argument key 'node' must not have null value",
            "snapshot",
            {},
            "disk-has-no-source",
        ),
        ("missing source information for device vda", "change-media", {}, "not-removable"),
        ("missing source information for device vda", "define", {}, "invalid-config"),
        (
            "unsupported configuration: storage format 'raw' does not support backing store",
            "start",
            {},
            "invalid-config",
        ),
    ],
)
def test_libvirt_messages_map_to_stable_codes(
    message: str, op: str, args: dict[str, Any], code: str
) -> None:
    from conformance.adapters.libvirt import error_code_for

    assert error_code_for(message, op, args) == code


def test_the_chain_is_read_from_the_live_disk_element() -> None:
    import xml.etree.ElementTree as ET

    from conformance.adapters.libvirt import chain_from_disk_xml

    disk = ET.fromstring(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source file='/d/top.qcow2' index='3'/>"
        "<backingStore type='file' index='1'><format type='qcow2'/><source file='/d/base.qcow2'/>"
        "<backingStore/></backingStore><target dev='vda' bus='scsi'/></disk>"
    )
    assert chain_from_disk_xml(disk) == {
        "chain": [
            {"filename": "/d/top.qcow2", "format": "qcow2", "type": "file", "index": 3},
            {"filename": "/d/base.qcow2", "format": "qcow2", "type": "file", "index": 1},
        ],
        "terminated": True,
    }
    unknown_end = ET.fromstring(
        "<disk type='file'><driver type='qcow2'/><source file='/d/top.qcow2' index='1'/></disk>"
    )
    assert chain_from_disk_xml(unknown_end)["terminated"] is False
    empty = ET.fromstring("<disk type='file' device='cdrom'><target dev='hdc'/></disk>")
    assert chain_from_disk_xml(empty) == {"chain": None}
