"""The JSON-lines protocol: its schema, its documentation, the smoke test, and the example.

The example adapter (examples/qemu-img-adapter/adapter.py) must pass the smoke test and
the probe cases; two deliberately wrong copies of it, made here with a one-line patch,
must fail the cases that name their mistake.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance import protocol
from conformance.adapters.base import AdapterError
from conformance.adapters.cmd import CmdAdapter
from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import SCHEMA_PATH as CASE_SCHEMA_PATH
from conformance.catalogue import Case, load, load_cases
from conformance.runner import CaseResult, Runner, Status, substitute
from conformance.smoke import UNKNOWN_OPERATION, smoke
from simulator.hypervisor import OpError
from simulator.model import ErrorCode

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "qemu-img-adapter" / "adapter.py"
PROTOCOL_DOC = REPO / "conformance" / "PROTOCOL.md"

# -- the schema --------------------------------------------------------------------------

VALID: dict[str, list[Any]] = {
    "startRequest": [{"cmd": "start", "version": 1}],
    "beginCaseRequest": [{"cmd": "begin-case", "directory": "/tmp/case"}],
    "endCaseRequest": [{"cmd": "end-case"}],
    "shutdownRequest": [{"cmd": "shutdown"}],
    "operationRequest": [
        {"cmd": "probe", "seq": 1, "path": "/tmp/a.qcow2", "format": None},
        {"cmd": "start", "seq": 2, "domain": "cs-a"},
        {"cmd": "define", "seq": 3, "domain": "cs-a", "disks": [{"target": "vda", "path": None}]},
        {"cmd": "daemon-restart", "seq": 4},
    ],
    "startReply": [
        {
            "version": 1,
            "implementation": {
                "name": "x",
                "version": "1.0",
                "profile": "qemu",
                "capabilities": ["probe"],
                "homepage": "https://example.org",
            },
        }
    ],
    "okReply": [{"ok": True}, {"ok": False, "error": {"code": "bad-request", "message": "?"}}],
    "answer": [
        {"seq": 1, "rc": 0},
        {"seq": 1, "rc": -1, "error": {"code": "backing-loop", "message": "loop", "path": "/a"}},
        {"seq": 1, "rc": 0, "error": {"code": "backing-missing", "message": "forced"}},
        {"seq": 1, "rc": 0, "chain": None},
        {"seq": 1, "rc": 0, "chain": [{"filename": "/a", "format": "raw", "index": 0,
                                       "cluster-size": 65536}], "terminated": True},
        {"seq": 1, "rc": 0, "counters": {"probes": 2}, "x-elapsed-ms": 3},
    ],
}  # fmt: skip

INVALID: dict[str, list[Any]] = {
    "startRequest": [{"cmd": "start", "version": 2}, {"cmd": "start", "version": 1, "seq": 1}],
    "operationRequest": [
        {"cmd": "probe", "path": "/a"},
        {"cmd": "teleport", "seq": 1},
        {"cmd": "probe", "seq": 0, "path": "/a"},
        {"cmd": "probe", "seq": 1, "pathname": "/a"},
        {"cmd": "probe", "seq": 1},
        {"cmd": "snapshot", "seq": 1, "domain": "cs-a", "target": "vda"},
        {"cmd": "fault", "seq": 1, "fault": "replace", "path": "/a"},
    ],
    "startReply": [
        {"version": 1, "implementation": {"name": "x", "version": "1", "profile": "qemu"}},
        {"version": 2, "implementation": {"name": "x", "version": "1", "profile": "q",
                                          "capabilities": []}},
    ],
    "okReply": [{"ok": False}, {"ok": "yes"}],
    "answer": [
        {"rc": 0},
        {"seq": 1, "rc": -1},
        {"seq": 1, "rc": -1, "error": None},
        {"seq": 1, "rc": 0, "terminated": "yes"},
        {"seq": 1, "rc": 0, "chain": [{"filename": "/a", "format": "raw"}]},
        {"seq": 1, "rc": 0, "results": []},
        {"seq": 1, "rc": -1, "error": {"code": "Backing Loop", "message": "x"}},
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("definition", "message"),
    [(definition, message) for definition, messages in VALID.items() for message in messages],
)
def test_the_schema_accepts_each_documented_message(definition: str, message: Any) -> None:
    assert protocol.problems(message, definition) == []
    assert protocol.problems(message, "request" if "Request" in definition else definition) == []


@pytest.mark.parametrize(
    ("definition", "message"),
    [(definition, message) for definition, messages in INVALID.items() for message in messages],
)
def test_the_schema_refuses_malformed_messages(definition: str, message: Any) -> None:
    assert protocol.problems(message, definition) != []
    with pytest.raises(protocol.ProtocolError, match=f"not a valid {definition}"):
        protocol.check(message, definition)


def test_the_whole_schema_is_valid_and_accepts_every_message() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(protocol.schema())
    validator = jsonschema.Draft202012Validator(protocol.schema())
    for messages in VALID.values():
        for message in messages:
            assert validator.is_valid(message), message


def test_the_operations_are_exactly_the_catalogues_step_ops() -> None:
    case_schema = json.loads(CASE_SCHEMA_PATH.read_text())
    step_ops = case_schema["$defs"]["step"]["properties"]["op"]["enum"]
    assert sorted(protocol.OPERATIONS) == sorted(step_ops)
    assert protocol.schema()["$defs"]["operation"]["enum"] == step_ops


def test_the_capabilities_and_step_arguments_are_the_case_files() -> None:
    case_defs = json.loads(CASE_SCHEMA_PATH.read_text())["$defs"]
    assert protocol.known_capabilities() == frozenset(case_defs["capability"]["enum"])
    step_arguments = set(case_defs["step"]["properties"]) - {"op", "note", "expect"}
    request = protocol.schema()["$defs"]["operationRequest"]["properties"]
    assert set(request) - {"cmd", "seq"} == step_arguments
    assert protocol.schema()["$defs"]["disk"] == case_defs["disk"]


def test_every_step_of_the_catalogue_is_a_valid_operation_request() -> None:
    for case in load().cases:
        for step in case.steps:
            arguments = {key: value for key, value in step.items() if key not in ("expect", "note")}
            op = arguments.pop("op")
            protocol.check_request(protocol.operation_request(1, op, arguments))


def test_a_line_is_one_json_object() -> None:
    line = protocol.encode({"cmd": "probe", "seq": 1, "path": "/tmp/caf\udce9.qcow2"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert protocol.decode(line)["path"] == "/tmp/caf\udce9.qcow2"
    for garbage in (b"[1, 2]\n", b"hello\n", b"\n"):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode(garbage)


def test_the_protocol_document_names_every_command_capability_and_code() -> None:
    text = PROTOCOL_DOC.read_text()
    names = [*protocol.OPERATIONS, *protocol.CONTROL_COMMANDS, *protocol.known_capabilities()]
    codes = [code.value for code in ErrorCode] + [code.value for code in OpError]
    for name in [*names, *codes, protocol.UNSUPPORTED, protocol.BAD_REQUEST]:
        assert f"`{name}`" in text, name
    arguments = protocol.schema()["$defs"]["operationRequest"]["properties"]
    for argument in arguments:
        assert f"`{argument}`" in text, argument


def test_the_documents_examples_are_valid_messages() -> None:
    text = PROTOCOL_DOC.read_text()
    lines = re.findall(r"^([<>]) (\{.*\})$", text, flags=re.MULTILINE)
    assert len(lines) > 10
    for direction, raw in lines:
        message = json.loads(raw)
        if message.get("cmd") == UNKNOWN_OPERATION:
            continue
        if direction == ">":
            protocol.check_request(message)
        elif "implementation" in message:
            protocol.check(message, "startReply")
        elif "ok" in message:
            protocol.check(message, "okReply")
        else:
            protocol.check(message, "answer")


# -- serving an adapter ------------------------------------------------------------------


def serve_lines(requests: list[dict[str, Any] | bytes], spec: str = "reference:qemu") -> list[Any]:
    lines = [item if isinstance(item, bytes) else protocol.encode(item) for item in requests]
    done = subprocess.run(
        [sys.executable, "-m", "conformance.protocol", spec],
        input=b"".join(lines),
        capture_output=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_serve_answers_unknown_operations_and_unreadable_requests(tmp_path: Path) -> None:
    replies = serve_lines(
        [
            protocol.start_request(),
            {"cmd": "teleport", "seq": 1},
            b"not json\n",
            {"cmd": "probe", "seq": 2, "pathname": "/x"},
            {"cmd": "reticulate"},
            protocol.shutdown_request(),
            {"cmd": "never-read", "seq": 3},
        ]
    )
    assert replies[0]["implementation"]["profile"] == "qemu"
    assert replies[1] == {
        "seq": 1,
        "rc": -1,
        "error": {"code": "unsupported", "message": "operation 'teleport' is not supported"},
    }
    assert replies[2]["ok"] is False and replies[2]["error"]["code"] == "bad-request"
    assert replies[3]["seq"] == 2 and replies[3]["error"]["code"] == "bad-request"
    assert replies[4]["ok"] is False
    assert len(replies) == 5


LIFECYCLE_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("define", {"domain": "cs-a", "disks": [{"target": "vda", "path": "$DIR/top.qcow2",
                                             "format": "qcow2"}]}),
    ("start", {"domain": "cs-a"}),
    ("chain", {"domain": "cs-a", "target": "vda"}),
    ("snapshot", {"domain": "cs-a", "target": "vda", "overlay": "$DIR/snap.qcow2"}),
    ("block-commit", {"domain": "cs-a", "target": "vda", "top": "vda[9]"}),
    ("block-pull", {"domain": "cs-a", "target": "vda"}),
    ("job-step", {"domain": "cs-a", "target": "vda"}),
    ("chain", {"domain": "cs-a", "target": "vda"}),
    ("deliver", {}),
    ("determine-chain", {"domain": "cs-a", "target": "vda", "force": True}),
    ("counters", {}),
    ("destroy", {"domain": "cs-a"}),
    ("start", {"domain": "cs-b"}),
]  # fmt: skip


def in_case_terms(answer: dict[str, Any], directory: Path) -> Any:
    """``answer`` with the case directory written as ``$DIR``."""
    return json.loads(json.dumps(answer).replace(str(directory), "$DIR"))


def test_the_reference_answers_the_same_in_process_and_over_the_protocol(
    tmp_path: Path,
) -> None:
    from images.build import build
    from images.corpus import entries

    spec = next(entry.spec for entry in entries() if entry.name == "qcow2-raw-relative")
    assert spec is not None
    answers = {}
    for kind in ("direct", "served"):
        directory = tmp_path / kind
        build(spec, directory)
        adapter: Any = (
            ReferenceAdapter("libvirt-modern")
            if kind == "direct"
            else CmdAdapter([sys.executable, "-m", "conformance.protocol", "reference"], 60)
        )
        adapter.begin_case(directory)
        answers[kind] = [
            in_case_terms(adapter.call(op, substitute(args, directory)), directory)
            for op, args in LIFECYCLE_STEPS
        ]
        adapter.end_case()
        adapter.close()
    assert answers["served"] == answers["direct"]
    assert any(answer["rc"] == -1 for answer in answers["direct"])


# -- the smoke test ----------------------------------------------------------------------

BROKEN_HARNESS = """
import json, sys
flaw = sys.argv[1]
for line in sys.stdin:
    request = json.loads(line)
    if request["cmd"] == "shutdown":
        break
    if "seq" in request:
        seq = None if flaw == "no-seq" else request["seq"]
        if request["cmd"] == "probe":
            reply = {"seq": seq, "rc": 0, "terminated": True,
                     "chain": [{"filename": request["path"], "format": "raw", "index": 0}]}
            if flaw == "empty-chain":
                reply["chain"] = []
        else:
            reply = {"seq": seq, "rc": 0 if flaw == "accepts-anything" else -1,
                     "error": {"code": "unsupported", "message": "no"}}
        if seq is None:
            del reply["seq"]
    elif request["cmd"] == "start":
        capabilities = ["probe", "teleport"] if flaw == "odd-capability" else ["probe"]
        reply = {"version": 1, "implementation": {"name": "broken", "version": "0",
                 "profile": "qemu", "capabilities": capabilities}}
    else:
        reply = {"ok": True}
    print(json.dumps(reply), flush=True)
"""


@pytest.mark.parametrize(
    ("flaw", "problem"),
    [
        ("no-seq", "answer to 'probe' carries seq None, expected 1"),
        ("empty-chain", "expected a one-layer chain, got 0 layer(s)"),
        ("accepts-anything", "an unknown operation: expected rc -1 with error 'unsupported'"),
        ("odd-capability", "capabilities the protocol does not know: teleport"),
    ],
)
def test_smoke_names_what_a_broken_implementation_gets_wrong(
    tmp_path: Path, flaw: str, problem: str
) -> None:
    script = tmp_path / "broken.py"
    script.write_text(BROKEN_HARNESS)
    problems = smoke(f"cmd:{sys.executable} {script} {flaw}", timeout=10)
    assert any(problem in found for found in problems), problems


def test_smoke_reports_an_implementation_that_does_not_start(tmp_path: Path) -> None:
    problems = smoke(f"cmd:{tmp_path / 'nothing-here'}", timeout=5)
    assert len(problems) == 1 and "cannot run" in problems[0]


@pytest.mark.parametrize(
    "spec",
    [
        "reference",
        "reference:seed-v2",
        "python:conformance.adapters.reference:ReferenceAdapter",
        f"cmd:{sys.executable} -m conformance.protocol reference:libvirt-1.0",
    ],
)
def test_the_reference_passes_smoke_however_it_is_attached(spec: str) -> None:
    assert smoke(spec) == []


@pytest.mark.qemu_img
@pytest.mark.parametrize("spec", ["qemu-img", f"cmd:{sys.executable} {EXAMPLE}"])
def test_qemu_img_and_the_example_pass_smoke(qemu_img: str, spec: str) -> None:
    assert smoke(spec) == []


# -- the example and its wrong variants ----------------------------------------------------


def probe_case(name: str, corpus: str, path: str, outcome: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"probe.example.{name}",
        "description": f"the example adapter on corpus {corpus}",
        "provenance": [{"kind": "qemu-observed", "ref": "qemu-img 7.2 info --backing-chain"}],
        "images": [{"corpus": corpus}],
        "steps": [{"op": "probe", "path": path, "expect": {"default": outcome}}],
    }


EXAMPLE_CASES = load_cases(
    {
        "cases": [
            probe_case(
                "three-layers",
                "chains/qcow2-qcow2-raw",
                "$DIR/layer-0.qcow2",
                {
                    "chain": [
                        {"filename": "$DIR/layer-0.qcow2", "format": "qcow2", "index": 0},
                        {"filename": "$DIR/layer-1.qcow2", "format": "qcow2", "index": 1},
                        {"filename": "$DIR/layer-2.raw", "format": "raw", "index": 2},
                    ],
                    "terminated": True,
                },
            ),
            probe_case(
                "raw",
                "chains/raw",
                "$DIR/disk.raw",
                {"chain": [{"filename": "$DIR/disk.raw", "format": "raw"}], "terminated": True},
            ),
            probe_case(
                "loop",
                "chains/loop-mutual",
                "$DIR/loop-0.qcow2",
                {"error": "backing-loop", "message": "creates an infinite loop"},
            ),
            probe_case("missing", "chains/missing-backing", "$DIR/top.qcow2",
                       {"error": "backing-missing"}),
        ]
    },
    "tests/conformance/test_protocol.py",
)  # fmt: skip

WRONG_VARIANTS = {
    "drops-last-layer": (
        "for index, layer in enumerate(layers)]",
        "for index, layer in enumerate(layers[:-1])]",
    ),
    "loops-as-missing": (
        '("creates an infinite loop", "backing-loop"),',
        '("creates an infinite loop", "backing-missing"),',
    ),
}
"""A one-line patch of the example per mistake: (the line as it is, the line made wrong)."""


def wrong_variant(name: str, directory: Path) -> Path:
    """The example with one deliberate mistake, written into ``directory``."""
    original, wrong = WRONG_VARIANTS[name]
    source = EXAMPLE.read_text()
    assert source.count(original) == 1, f"the example no longer has {original!r}"
    variant = directory / f"adapter-{name}.py"
    variant.write_text(source.replace(original, wrong))
    return variant


def run_cases(script: Path, cases: list[Case], cache: Path) -> dict[str, CaseResult]:
    adapter = CmdAdapter([sys.executable, str(script)], timeout=60)
    try:
        runner = Runner(adapter, adapter.info.profile, cache_root=cache)
        return {case.id.removeprefix("probe.example."): runner.run(case) for case in cases}
    finally:
        adapter.close()


@pytest.mark.qemu_img
def test_the_example_passes_the_probe_cases(qemu_img: str, tmp_path: Path) -> None:
    results = run_cases(EXAMPLE, list(EXAMPLE_CASES), tmp_path / "cache")
    assert {name: result.status for name, result in results.items()} == {
        name: Status.PASSED for name in results
    }, {name: result.message for name, result in results.items()}


@pytest.mark.qemu_img
@pytest.mark.parametrize(
    ("variant", "caught_by"),
    [("drops-last-layer", {"three-layers", "raw"}), ("loops-as-missing", {"loop"})],
)
def test_the_probe_cases_catch_a_wrong_variant_of_the_example(
    qemu_img: str, tmp_path: Path, variant: str, caught_by: set[str]
) -> None:
    results = run_cases(wrong_variant(variant, tmp_path), list(EXAMPLE_CASES), tmp_path / "cache")
    failed = {name for name, result in results.items() if result.status is Status.FAILED}
    assert failed == caught_by, {name: result.message for name, result in results.items()}
    for name in caught_by:
        assert results[name].steps[-1].problem


CATALOGUE_CASES_CATCHING = {
    "drops-last-layer": (
        "probe.qcow2.relative-backing",
        "probe.virstoragetest.qcow2-qcow2_qcow2-qcow2_raw-raw",
    ),
    "loops-as-missing": (
        "probe.loops.three-ring",
        "probe.virstoragetest.qcow2-qcow2_infinite-self",
    ),
}
"""Catalogue cases each wrong variant must fail (and the example must pass)."""
CATALOGUE_CASES_PASSED_BY_BOTH = ("probe.names.missing-middle", "probe.virstoragetest.missing")


def catalogue_cases(ids: tuple[str, ...] | list[str]) -> list[Case]:
    """The named catalogue cases that exist (the catalogue is still growing)."""
    catalogue = {case.id: case for case in load().cases}
    return [catalogue[case_id] for case_id in ids if case_id in catalogue]


def run_catalogue_cases(script: Path, ids: list[str], cache: Path) -> dict[str, CaseResult]:
    cases = catalogue_cases(ids)
    if not cases:
        pytest.skip(f"the catalogue has none of {ids}")
    adapter = CmdAdapter([sys.executable, str(script)], timeout=60)
    runner = Runner(adapter, "qemu", cache_root=cache)
    try:
        return {case.id: runner.run(case) for case in cases}
    finally:
        adapter.close()


ALL_CATALOGUE_IDS = [
    *(case_id for ids in CATALOGUE_CASES_CATCHING.values() for case_id in ids),
    *CATALOGUE_CASES_PASSED_BY_BOTH,
]


@pytest.mark.qemu_img
def test_the_example_passes_probe_cases_of_the_catalogue(qemu_img: str, tmp_path: Path) -> None:
    results = run_catalogue_cases(EXAMPLE, ALL_CATALOGUE_IDS, tmp_path / "cache")
    assert {case_id: result.message for case_id, result in results.items() if result.message} == {}
    assert {result.status for result in results.values()} == {Status.PASSED}


@pytest.mark.qemu_img
@pytest.mark.parametrize("variant", sorted(CATALOGUE_CASES_CATCHING))
def test_named_catalogue_probe_cases_catch_a_wrong_variant_of_the_example(
    qemu_img: str, tmp_path: Path, variant: str
) -> None:
    script = wrong_variant(variant, tmp_path)
    results = run_catalogue_cases(script, ALL_CATALOGUE_IDS, tmp_path / "cache")
    failed = {case_id for case_id, result in results.items() if result.status is Status.FAILED}
    present = {case.id for case in catalogue_cases(CATALOGUE_CASES_CATCHING[variant])}
    assert failed == present


def test_each_wrong_variant_differs_from_the_example(tmp_path: Path) -> None:
    for name in WRONG_VARIANTS:
        assert wrong_variant(name, tmp_path).read_text() != EXAMPLE.read_text()


def test_the_example_imports_nothing_of_the_project() -> None:
    source = EXAMPLE.read_text()
    imported = re.findall(r"^(?:from|import) (\w+)", source, flags=re.MULTILINE)
    assert set(imported) <= set(sys.stdlib_module_names) | {"__future__"}


def test_the_example_refuses_another_protocol_version() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        input=b'{"cmd":"start","version":2}\n',
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0 and b"version 2" in done.stderr and done.stdout == b""


def test_a_program_that_does_not_speak_the_protocol_is_an_adapter_error() -> None:
    says = "reply to 'start' is not JSON|wrote a line nobody asked for: b'hello"
    with pytest.raises(AdapterError, match=says):
        CmdAdapter([sys.executable, "-c", "print('hello')"], timeout=5)
