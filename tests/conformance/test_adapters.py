"""The adapters: registry specs, qemu-img on real chains, Python objects, and executables.

The executables are small Python scripts (``FAKE_HARNESS``) that speak the protocol
correctly until told to misbehave: hang, exit, print garbage, echo the wrong seq.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conformance.adapters.base import AdapterError, ImplementationInfo
from conformance.adapters.cmd import CmdAdapter, HarnessProcess
from conformance.adapters.python import PythonAdapter, load_python_adapter
from conformance.adapters.qemu_img import QemuImgAdapter, error_code_for, refusal_message
from conformance.adapters.reference import ReferenceAdapter
from conformance.adapters.registry import SPEC_FORMS, known_adapters, open_adapter
from conformance.catalogue import load_cases
from conformance.runner import Runner, Status
from simulator.model import ErrorCode
from tests.chains import create, rebase_unsafe

# -- registry ----------------------------------------------------------------------------


def test_reference_specs_open_the_reference_under_a_profile() -> None:
    assert open_adapter("reference").info.profile == "libvirt-modern"
    assert open_adapter("reference:seed-v2").info.profile == "seed-v2"
    assert open_adapter(" reference:qemu ").info.capabilities == frozenset({"probe"})


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("reference:no-such-profile", "no-such-profile"),
        ("reference:", "no profile"),
        ("qemu-img:7.2", "takes no argument"),
        ("python:", "python:MODULE:ATTRIBUTE"),
        ("python:no_colon_here", "MODULE:ATTRIBUTE"),
        ("cmd:", "no command"),
        ("cmd:'unterminated", "not valid"),
        ("libvirt-or-something", "cmd:COMMAND LINE"),
        ("", "the forms are"),
    ],
)
def test_a_bad_spec_is_an_adapter_error_that_says_why(spec: str, says: str) -> None:
    with pytest.raises(AdapterError) as raised:
        open_adapter(spec)
    assert says in str(raised.value)


def test_an_unknown_spec_names_every_form() -> None:
    with pytest.raises(AdapterError) as raised:
        open_adapter("vmware")
    for form, _ in SPEC_FORMS:
        assert form in str(raised.value)


@pytest.mark.qemu_img
def test_every_known_adapter_opens_and_describes_itself() -> None:
    known = known_adapters()
    assert [spec for spec, _ in known][:2] == ["reference", "reference:seed-v2"]
    for spec, description in known:
        assert description
        try:
            adapter = open_adapter(spec)
        except AdapterError as error:
            # The one adapter that needs a service: without it, it says how to start one.
            assert spec == "libvirt" and "libvirtd-service start" in str(error)
            continue
        assert adapter.info.capabilities
        adapter.close()


def test_reference_fault_from_a_missing_file_is_refused(tmp_path: Path) -> None:
    adapter = ReferenceAdapter("libvirt-modern")
    adapter.begin_case(tmp_path)
    (tmp_path / "a.raw").write_bytes(b"")
    answer = adapter.call(
        "fault",
        {"fault": "replace", "path": str(tmp_path / "a.raw"), "content_from": str(tmp_path / "b")},
    )
    assert (answer["rc"], answer["error"]["code"]) == (-1, "file-missing")


# -- qemu-img ----------------------------------------------------------------------------


@pytest.fixture
def qemu_img_adapter(qemu_img: str) -> QemuImgAdapter:
    return QemuImgAdapter(timeout=30)


@pytest.mark.qemu_img
def test_qemu_img_adapter_describes_qemu_img(qemu_img_adapter: QemuImgAdapter) -> None:
    info = qemu_img_adapter.info
    assert (info.name, info.profile) == ("qemu-img", "qemu")
    assert info.capabilities == frozenset({"probe"})
    assert info.version[0].isdigit()


@pytest.mark.qemu_img
def test_qemu_img_adapter_answers_a_chain_with_qemu_img_keys_and_indexes(
    qemu_img_adapter: QemuImgAdapter, tmp_path: Path
) -> None:
    create(tmp_path / "base.raw", "raw", size="1M")
    create(tmp_path / "mid.qcow2", size="1M", backing="base.raw", backing_format="raw")
    create(tmp_path / "top.qcow2", size="1M", backing="mid.qcow2", backing_format="qcow2")
    qemu_img_adapter.begin_case(tmp_path)
    answer = qemu_img_adapter.call("probe", {"path": str(tmp_path / "top.qcow2")})
    assert answer["rc"] == 0 and answer["terminated"] is True
    chain = answer["chain"]
    assert [(layer["filename"], layer["format"], layer["index"]) for layer in chain] == [
        (str(tmp_path / "top.qcow2"), "qcow2", 0),
        (str(tmp_path / "mid.qcow2"), "qcow2", 1),
        (str(tmp_path / "base.raw"), "raw", 2),
    ]
    assert chain[0]["backing-filename"] == "mid.qcow2"
    assert chain[0]["full-backing-filename"] == str(tmp_path / "mid.qcow2")
    assert chain[1]["backing-filename-format"] == "raw"
    assert chain[2]["virtual-size"] == 1 << 20


@pytest.mark.qemu_img
def test_qemu_img_adapter_reports_a_loop_as_a_backing_loop(
    qemu_img_adapter: QemuImgAdapter, tmp_path: Path
) -> None:
    create(tmp_path / "a.qcow2", size="1M")
    create(tmp_path / "b.qcow2", size="1M", backing="a.qcow2", backing_format="qcow2")
    rebase_unsafe(tmp_path / "a.qcow2", "b.qcow2", "qcow2")
    answer = qemu_img_adapter.call("probe", {"path": str(tmp_path / "a.qcow2")})
    assert answer["rc"] == -1
    assert answer["error"]["code"] == "backing-loop"
    assert answer["error"]["message"] == (
        f"Backing file '{tmp_path / 'a.qcow2'}' creates an infinite loop."
    )


@pytest.mark.qemu_img
def test_qemu_img_adapter_tells_a_missing_top_from_a_missing_backing(
    qemu_img_adapter: QemuImgAdapter, tmp_path: Path
) -> None:
    create(tmp_path / "top.qcow2", size="1M", backing="gone.qcow2", backing_format="qcow2")
    below = qemu_img_adapter.call("probe", {"path": str(tmp_path / "top.qcow2")})
    assert below["error"]["code"] == "backing-missing"
    assert below["error"]["path"] == str(tmp_path / "gone.qcow2")
    assert "No such file or directory" in below["error"]["message"]
    top = qemu_img_adapter.call("probe", {"path": str(tmp_path / "nothing.qcow2")})
    assert top["error"]["code"] == "not-found"


@pytest.mark.qemu_img
def test_qemu_img_adapter_passes_the_format_and_maps_its_refusals(
    qemu_img_adapter: QemuImgAdapter, tmp_path: Path
) -> None:
    raw = create(tmp_path / "disk.raw", "raw", size="1M")
    as_raw = qemu_img_adapter.call("probe", {"path": str(raw), "format": "raw"})
    assert [layer["format"] for layer in as_raw["chain"]] == ["raw"]
    as_qcow2 = qemu_img_adapter.call("probe", {"path": str(raw), "format": "qcow2"})
    assert as_qcow2["error"]["code"] == "header-invalid"
    assert "Image is not in qcow2 format" in as_qcow2["error"]["message"]
    as_cow = qemu_img_adapter.call("probe", {"path": str(raw), "format": "cow"})
    assert as_cow["error"]["code"] == "unknown-format"


@pytest.mark.qemu_img
def test_qemu_img_adapter_runs_in_the_case_directory(
    qemu_img_adapter: QemuImgAdapter, tmp_path: Path
) -> None:
    create(tmp_path / "disk.raw", "raw", size="1M")
    qemu_img_adapter.begin_case(tmp_path)
    answer = qemu_img_adapter.call("probe", {"path": "disk.raw"})
    assert answer["chain"][0]["filename"] == "disk.raw"


@pytest.mark.qemu_img
def test_qemu_img_adapter_does_nothing_but_probe(qemu_img_adapter: QemuImgAdapter) -> None:
    answer = qemu_img_adapter.call("define", {"domain": "cs-a", "disks": []})
    assert answer["rc"] == -1 and answer["error"]["code"] == "unsupported"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Backing file 'a.qcow2' creates an infinite loop.", ErrorCode.BACKING_LOOP),
        ("Could not open 'top.qcow2': Could not open 'top.qcow2': No such file or directory",
         ErrorCode.NOT_FOUND),
        ("Could not open 'b.qcow2': Could not open 'b.qcow2': No such file or directory",
         ErrorCode.BACKING_MISSING),
        ("Could not open 'aaaa': Could not open 'aaaa': File name too long", ErrorCode.READ_FAILED),
        ("Could not open 'top.qcow2': Backing file name too long", ErrorCode.HEADER_INVALID),
        ("Could not open 'foo:bar': Unknown protocol 'foo'", ErrorCode.BACKING_NAME_INVALID),
        ("Could not open 'rbd:pool/img': Unknown protocol 'rbd'", ErrorCode.NETWORK_BACKING),
        ("Could not open 'top.qcow2': Unknown driver 'cow'", ErrorCode.UNKNOWN_FORMAT),
        ("Could not open 'nbd:localhost:1': Failed to connect to 'localhost:1': "
         "Connection refused", ErrorCode.NETWORK_BACKING),
        ("Could not open 'nbd:example.org:6000': address resolution failed for "
         "example.org:6000: Name or service not known", ErrorCode.NETWORK_BACKING),
        ("Could not open 'nbd+unix:///x?socket=/s': Failed to connect to '/s': "
         "No such file or directory", ErrorCode.NETWORK_BACKING),
        ("Could not open 'd': 'file' driver requires 'd' to be a regular file",
         ErrorCode.READ_FAILED),
        ("Could not open 'x.qcow2': Unsupported qcow2 version 4", ErrorCode.HEADER_INVALID),
        ("Could not open 'x.qcow2': qcow2 header too short", ErrorCode.HEADER_INVALID),
        ("Could not open 'x.qcow2': Permission denied", ErrorCode.PERMISSION_DENIED),
        ("Could not open 'json:{': Could not parse the JSON options: JSON parse error",
         ErrorCode.BACKING_NAME_INVALID),
    ],
)  # fmt: skip
def test_qemu_img_messages_map_to_stable_codes(message: str, code: ErrorCode) -> None:
    assert error_code_for(message, "top.qcow2") is code


def test_qemu_img_message_keeps_the_last_line_and_notes_the_others() -> None:
    stderr = (
        "qemu: module block-block-rbd not found, do you want to install qemu-block-extra?\n"
        "qemu-img: Could not open 'rbd:pool/img': Unknown protocol 'rbd'\n"
    )
    assert refusal_message(stderr) == (
        "Could not open 'rbd:pool/img': Unknown protocol 'rbd' (qemu: module block-block-rbd "
        "not found, do you want to install qemu-block-extra?)"
    )


# -- python ------------------------------------------------------------------------------

ADAPTER_FILE = """
from conformance.adapters.base import ImplementationInfo

class Probes:
    info = ImplementationInfo("file-adapter", "1", "qemu", frozenset({"probe"}))
    def begin_case(self, directory): pass
    def call(self, op, args):
        if op == "explode":
            raise RuntimeError("boom")
        if op == "nonsense":
            return {"rc": "zero"}
        return {"rc": 0, "chain": [{"filename": args["path"], "format": "raw", "index": 0}],
                "terminated": True}
    def end_case(self): pass
    def close(self): pass

instance = Probes()

class Unfinished:
    info = Probes.info
    def call(self, op, args): return {"rc": 0}

class Refuses:
    def __init__(self):
        raise ValueError("needs a URI")

class WrongInfo(Probes):
    info = {"name": "x"}
"""


@pytest.fixture
def adapter_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_adapter.py"
    path.write_text(ADAPTER_FILE)
    return path


def test_python_adapter_loads_a_class_by_module_path() -> None:
    adapter = load_python_adapter("conformance.adapters.reference:ReferenceAdapter")
    assert isinstance(adapter, PythonAdapter)
    assert isinstance(adapter.implementation, ReferenceAdapter)
    assert adapter.info.name == "reference"


def test_python_adapter_loads_from_a_file_a_class_or_an_object(adapter_file: Path) -> None:
    from_class = open_adapter(f"python:{adapter_file}:Probes")
    from_object = open_adapter(f"python:{adapter_file}:instance")
    assert from_class.info.name == from_object.info.name == "file-adapter"
    answer = from_class.call("probe", {"path": "/x.raw"})
    assert answer["chain"][0]["filename"] == "/x.raw"


@pytest.mark.parametrize(
    ("attribute", "says"),
    [
        ("Missing", "has no attribute 'Missing'"),
        ("Unfinished", "lacks begin_case, end_case, close"),
        ("Refuses", "Refuses() failed: ValueError: needs a URI"),
        ("WrongInfo", "info is a dict"),
    ],
)
def test_python_adapter_refuses_what_is_not_an_adapter(
    adapter_file: Path, attribute: str, says: str
) -> None:
    with pytest.raises(AdapterError) as raised:
        load_python_adapter(f"{adapter_file}:{attribute}")
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_such_module_anywhere:Thing", "no module named 'no_such_module_anywhere'"),
        ("/no/such/file.py:Thing", "no file '/no/such/file.py'"),
        ("conformance.adapters.reference", "expected MODULE:ATTRIBUTE"),
    ],
)
def test_python_adapter_says_what_cannot_be_found(target: str, says: str) -> None:
    with pytest.raises(AdapterError) as raised:
        load_python_adapter(target)
    assert says in str(raised.value)


def test_python_adapter_reports_a_file_that_does_not_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    with pytest.raises(AdapterError, match=r"loading .* failed: SyntaxError"):
        load_python_adapter(f"{broken}:Thing")


def test_python_adapter_turns_exceptions_and_nonsense_into_adapter_errors(
    adapter_file: Path,
) -> None:
    adapter = load_python_adapter(f"{adapter_file}:Probes")
    with pytest.raises(AdapterError, match=r"explode: RuntimeError: boom \(at my_adapter.py:"):
        adapter.call("explode", {})
    with pytest.raises(AdapterError, match="not a valid result"):
        adapter.call("nonsense", {})


# -- executables -------------------------------------------------------------------------

FAKE_HARNESS = textwrap.dedent(
    """
    import json, os, sys, time

    behaviour, state = sys.argv[1], sys.argv[2]
    starts = int(open(state).read()) + 1 if os.path.exists(state) else 1
    open(state, "w").write(str(starts))
    if behaviour == "no-handshake" or (behaviour == "crash-then-no-start" and starts > 1):
        sys.exit("cannot start: the licence server is down")

    def say(message):
        sys.stdout.write(json.dumps(message) + "\\n")
        sys.stdout.flush()

    for line in sys.stdin:
        request = json.loads(line)
        command = request["cmd"]
        if "seq" in request:
            seq = request["seq"]
            first_start = starts == 1
            if behaviour == "hang" or (behaviour == "hang-first" and first_start):
                time.sleep(60)
            if behaviour in ("exit", "crash-then-no-start") or (
                behaviour == "exit-first" and first_start
            ):
                sys.stderr.write("Traceback: segmentation fault in probe\\n")
                sys.exit(3)
            if behaviour == "garbage":
                sys.stdout.write("this is not JSON\\n")
                sys.stdout.flush()
                continue
            if behaviour == "wrong-seq":
                seq += 100
            if behaviour == "bad-answer":
                say({"seq": seq, "rc": -1})
                continue
            say({"seq": seq, "rc": 0, "chain": [{"filename": request.get("path", "?"),
                 "format": "raw", "index": 0}], "terminated": True, "x-pid": os.getpid()})
        elif command == "start":
            version = 2 if behaviour == "version-2" else 1
            say({"version": version, "implementation": {"name": "fake", "version": "1",
                 "profile": "qemu", "capabilities": ["probe"]}})
        elif command == "shutdown":
            if behaviour == "ignore-shutdown":
                time.sleep(60)
            sys.exit(0)
        else:
            say({"ok": True})
    if behaviour == "ignore-shutdown":
        time.sleep(60)
    """
)


@pytest.fixture
def harness(tmp_path: Path) -> Path:
    path = tmp_path / "fake_harness.py"
    path.write_text(FAKE_HARNESS)
    return path


def fake(harness: Path, behaviour: str, timeout: float = 5.0) -> CmdAdapter:
    state = harness.with_name(f"starts-{behaviour}")
    return CmdAdapter([sys.executable, str(harness), behaviour, str(state)], timeout)


def starts(harness: Path, behaviour: str) -> int:
    return int(harness.with_name(f"starts-{behaviour}").read_text())


def stopped(process: HarnessProcess | None) -> bool:
    """The process has exited and been reaped."""
    assert process is not None
    return process.process.returncode is not None


def probe(adapter: CmdAdapter, tmp_path: Path) -> dict[str, Any]:
    return adapter.call("probe", {"path": str(tmp_path / "disk.raw")})


def test_cmd_adapter_does_the_handshake_and_strips_the_seq(harness: Path, tmp_path: Path) -> None:
    adapter = fake(harness, "fine")
    assert adapter.info == ImplementationInfo("fake", "1", "qemu", frozenset({"probe"}))
    adapter.begin_case(tmp_path)
    answer = probe(adapter, tmp_path)
    assert "seq" not in answer and answer["chain"][0]["filename"] == str(tmp_path / "disk.raw")
    adapter.end_case()
    adapter.close()


def test_cmd_adapter_kills_a_hanging_implementation(harness: Path, tmp_path: Path) -> None:
    adapter = fake(harness, "hang", timeout=0.5)
    process = adapter.process
    adapter.begin_case(tmp_path)
    started = time.monotonic()
    with pytest.raises(AdapterError, match=r"no reply to 'probe' \(seq 1\) within 0.5 s"):
        probe(adapter, tmp_path)
    assert time.monotonic() - started < 5
    assert stopped(process)
    adapter.end_case()
    adapter.close()


def test_cmd_adapter_reports_a_crash_with_its_status_and_stderr(
    harness: Path, tmp_path: Path
) -> None:
    adapter = fake(harness, "exit")
    adapter.begin_case(tmp_path)
    with pytest.raises(AdapterError) as raised:
        probe(adapter, tmp_path)
    message = str(raised.value)
    assert "exited with status 3 while answering 'probe' (seq 1)" in message
    assert "segmentation fault in probe" in message
    with pytest.raises(AdapterError, match="stopped earlier in this case"):
        probe(adapter, tmp_path)
    adapter.end_case()
    adapter.close()


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        ("garbage", "is not JSON"),
        ("wrong-seq", "carries seq 101"),
        ("bad-answer", "not a valid answer"),
    ],
)
def test_cmd_adapter_refuses_replies_that_break_the_protocol(
    harness: Path, tmp_path: Path, behaviour: str, says: str
) -> None:
    adapter = fake(harness, behaviour)
    process = adapter.process
    adapter.begin_case(tmp_path)
    with pytest.raises(AdapterError, match=says):
        probe(adapter, tmp_path)
    assert adapter.process is None and stopped(process)
    adapter.close()


@pytest.mark.parametrize("behaviour", ["exit-first", "hang-first"])
def test_cmd_adapter_restarts_for_the_next_case_replaying_the_handshake(
    harness: Path, tmp_path: Path, behaviour: str
) -> None:
    adapter = fake(harness, behaviour, timeout=1.0)
    first = adapter.process
    adapter.begin_case(tmp_path)
    with pytest.raises(AdapterError):
        probe(adapter, tmp_path)
    adapter.end_case()
    assert stopped(first)
    adapter.begin_case(tmp_path)
    answer = probe(adapter, tmp_path)
    assert first is not None and answer["x-pid"] != first.process.pid
    assert answer["rc"] == 0 and starts(harness, behaviour) == 2
    adapter.end_case()
    adapter.close()


def test_cmd_adapter_gives_up_after_repeated_failed_starts(harness: Path, tmp_path: Path) -> None:
    adapter = fake(harness, "crash-then-no-start")
    adapter.begin_case(tmp_path)
    with pytest.raises(AdapterError):
        probe(adapter, tmp_path)
    for _ in range(3):
        with pytest.raises(AdapterError, match="licence server is down"):
            adapter.begin_case(tmp_path)
    with pytest.raises(AdapterError, match="gave up: the implementation failed to start 3 times"):
        adapter.begin_case(tmp_path)
    assert starts(harness, "crash-then-no-start") == 4


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        (
            "no-handshake",
            "(?s)exited with status 1 (while answering|before reading) 'start'.*licence server",
        ),
        ("version-2", "speaks protocol version 2, the suite 1"),
    ],
)
def test_cmd_adapter_reports_a_failed_handshake(harness: Path, behaviour: str, says: str) -> None:
    with pytest.raises(AdapterError, match=says):
        fake(harness, behaviour)


def test_cmd_adapter_reports_a_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="cannot run"):
        CmdAdapter([str(tmp_path / "no-such-program")], 5)


def test_cmd_adapter_close_kills_an_implementation_that_does_not_exit(harness: Path) -> None:
    adapter = fake(harness, "ignore-shutdown", timeout=0.5)
    process = adapter.process
    adapter.close()
    assert stopped(process)
    assert adapter.process is None


def test_runner_reports_a_crash_as_an_error_and_runs_the_next_case(
    harness: Path, tmp_path: Path
) -> None:
    document = {
        "cases": [
            {
                "id": f"probe.test.{name}",
                "description": "a raw disk, probed by a fake implementation",
                "provenance": [{"kind": "reference", "ref": "tests"}],
                "images": [{"corpus": "chains/raw"}],
                "steps": [
                    {
                        "op": "probe",
                        "path": "$DIR/disk.raw",
                        "expect": {"default": {"chain": [{"filename": "$DIR/disk.raw"}]}},
                    }
                ],
            }
            for name in ("first", "second")
        ]
    }
    cases = load_cases(document, "inline")
    runner = Runner(fake(harness, "exit-first"), "qemu", cache_root=tmp_path / "cache")
    first, second = (runner.run(case) for case in cases)
    assert first.status is Status.ERROR
    assert "segmentation fault" in first.message
    assert second.status is Status.PASSED, second.message
    runner.adapter.close()
