"""The differential explorer: generation, comparison, shrinking, found case files and replay.

The explorations run the reference against itself under two profiles with a fixed seed, so
each is the same every run. Two differences separate seed-v2 from libvirt 1.0 (a failed
forced re-probe returns 0 instead of -1; a completed block commit is not re-probed), and the
explorer must find each on its own and shrink it to at most six steps.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from conformance import explore as explorer
from conformance.adapters.base import AdapterError, ImplementationInfo
from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import load_cases, validate_file
from conformance.cli import main
from conformance.explore import (
    UNANSWERED,
    ExploreError,
    Finding,
    compare,
    explore,
    hypothesis_settings,
    replay,
    sequence_strategy,
    step_requirements,
    write_finding,
)
from conformance.runner import Runner, Status

MAX_STEPS_OF_A_SHRUNK_DIFFERENCE = 6
EXAMPLES = 3000
"""Enough for each difference below to be found (they are found in a few hundred)."""


class LimitedReference(ReferenceAdapter):
    """The reference, offering fewer capabilities (the explorer must not use the others)."""

    def __init__(self, profile: str, without: frozenset[str]) -> None:
        super().__init__(profile)
        self.without = without

    @property
    def info(self) -> ImplementationInfo:
        full = super().info
        return replace(full, capabilities=full.capabilities - self.without)

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        step = {"op": op, **args}
        assert not step_requirements(step) & self.without, f"{op} needs what is not offered"
        return super().call(op, args)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """An empty directory where the explorer would put its sequences (RAM when it can)."""
    root = explorer.scratch_root(ReferenceAdapter())
    directory = Path(tempfile.mkdtemp(prefix="test-explore-", dir=root)) if root else tmp_path
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def pair(without: frozenset[str] = frozenset()) -> tuple[ReferenceAdapter, ReferenceAdapter]:
    return LimitedReference("seed-v2", without), LimitedReference("libvirt-1.0", without)


def is_failed_forced_reprobe(finding: Finding) -> bool:
    """seed-v2 returns 0 from a forced re-probe that fails; libvirt 1.0 returns -1."""
    step = finding.parting_step
    return (
        step["op"] == "determine-chain"
        and step["force"] is True
        and finding.implementation_answer["rc"] == 0
        and finding.oracle_answer["rc"] == -1
        and finding.implementation_answer["error"]["code"] == finding.oracle_answer["error"]["code"]
    )


def is_commit_not_reprobed(finding: Finding) -> bool:
    """After a commit completes, seed-v2 keeps the stale chain; libvirt 1.0 re-probes it."""
    ops = [step["op"] for step in finding.steps]
    impl_chain = finding.implementation_answer.get("chain") or []
    oracle_chain = finding.oracle_answer.get("chain") or []
    return (
        "block-commit" in ops
        and finding.parting_step["op"] == "chain"
        and len(impl_chain) > len(oracle_chain)
    )


# -- finding the seed-v2 / libvirt-1.0 differences -----------------------------------------


def test_finds_the_failed_forced_reprobe_and_shrinks_it(scratch: Path) -> None:
    impl, oracle = pair(without=frozenset({"block-commit"}))
    result = explore(impl, oracle, max_examples=EXAMPLES, seed=1, out_dir=None, workdir=scratch)
    finding = result.finding
    assert finding is not None
    assert len(finding.steps) <= MAX_STEPS_OF_A_SHRUNK_DIFFERENCE
    assert is_failed_forced_reprobe(finding), finding
    assert finding.implementation_answer["error"]["code"] == "backing-missing"
    assert [step["op"] for step in finding.steps][-2:] == ["fault", "determine-chain"]
    assert list(scratch.iterdir()) == []


def test_finds_the_commit_that_is_not_reprobed_and_shrinks_it(scratch: Path) -> None:
    impl, oracle = pair(without=frozenset({"determine-chain"}))
    result = explore(impl, oracle, max_examples=EXAMPLES, seed=1, out_dir=None, workdir=scratch)
    finding = result.finding
    assert finding is not None
    assert len(finding.steps) <= MAX_STEPS_OF_A_SHRUNK_DIFFERENCE
    assert is_commit_not_reprobed(finding), finding
    mid = "$DIR/mid.qcow2"
    assert [layer["filename"] for layer in finding.oracle_answer["chain"]] == [
        "$DIR/top.qcow2",
        "$DIR/base.qcow2",
    ]
    assert mid in [layer["filename"] for layer in finding.implementation_answer["chain"]]


def test_a_found_difference_is_written_as_a_case_that_judges_by_the_oracle(
    tmp_path: Path,
) -> None:
    impl, oracle = pair()
    result = explore(impl, oracle, max_examples=EXAMPLES, seed=2, out_dir=tmp_path / "found")
    finding = result.finding
    assert finding is not None and finding.case_path is not None
    assert is_failed_forced_reprobe(finding) or is_commit_not_reprobed(finding), finding
    assert len(finding.steps) <= MAX_STEPS_OF_A_SHRUNK_DIFFERENCE
    assert finding.case_path.parent == tmp_path / "found"
    document = json.loads(finding.case_path.read_text())
    validate_file(document, "found")
    [case] = load_cases(document, "found")
    assert case.id.startswith("found.reference-seed-v2-vs-reference-libvirt-1.0-")
    assert finding.case_path.name == f"{case.id}.json"
    assert [step["op"] for step in case.steps] == [step["op"] for step in finding.steps]
    assert all("expect" in step for step in case.steps)
    observed = document["cases"][0]["observed"]
    assert observed["parts_at"] == len(case.steps)
    assert observed["implementation"]["profile"] == "seed-v2"
    assert observed["oracle"]["profile"] == "libvirt-1.0"
    assert observed["answers"][-1] == {
        "implementation": finding.implementation_answer,
        "oracle": finding.oracle_answer,
    }
    # The case judges whatever runs it by the oracle's answers, under every profile.
    for profile in ("seed-v2", "libvirt-1.0", "libvirt-modern"):
        assert case.expected(case.steps[-1], profile) == case.steps[-1]["expect"]["default"]
    failing = Runner(ReferenceAdapter("seed-v2"), "seed-v2").run(case)
    assert failing.status is Status.FAILED
    assert failing.message.startswith(f"step {len(case.steps)} ")
    assert Runner(ReferenceAdapter("libvirt-1.0"), "libvirt-1.0").run(case).status is (
        Status.PASSED
    )


def test_the_same_seed_gives_the_same_exploration(scratch: Path) -> None:
    runs = [
        explore(*pair(), max_examples=EXAMPLES, seed=7, out_dir=None, workdir=scratch)
        for _ in range(2)
    ]
    first, second = (run.finding for run in runs)
    assert first is not None and second is not None
    assert first.steps == second.steps
    assert runs[0].sequences == runs[1].sequences


def test_one_profile_against_itself_agrees_and_leaves_nothing_behind(
    scratch: Path, tmp_path: Path
) -> None:
    counts: list[int] = []
    result = explore(
        ReferenceAdapter("libvirt-modern"),
        ReferenceAdapter("libvirt-modern"),
        max_examples=60,
        seed=3,
        out_dir=tmp_path / "found",
        workdir=scratch,
        progress=counts.append,
    )
    assert result.finding is None
    assert result.sequences >= 1
    assert result.sequences + result.repeats >= 60
    assert counts == list(range(1, result.sequences + 1))
    assert not (tmp_path / "found").exists()
    assert list(scratch.iterdir()) == []


# -- what is generated ---------------------------------------------------------------------

FEW_CAPABILITIES = frozenset({"lifecycle", "snapshot", "block-commit", "fault-injection"})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(sequence_strategy(FEW_CAPABILITIES, max_steps=3))
def test_only_operations_both_sides_offer_are_generated(steps: list[dict[str, Any]]) -> None:
    for step in steps:
        assert step_requirements(step) <= FEW_CAPABILITIES, step
        assert not step.get("active"), "active commit is not offered"
        assert step.get("fault") != "unreadable", "unreadable files are not offered"
    assert steps[0]["op"] == "define" and steps[1]["op"] == "start", "no transient domains"
    assert len(steps) <= 2 + 3


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(sequence_strategy(ReferenceAdapter("libvirt-modern").info.capabilities))
def test_generated_sequences_are_valid_case_steps(steps: list[dict[str, Any]]) -> None:
    document = {
        "cases": [
            {
                "id": "found.generated",
                "description": "a generated sequence",
                "provenance": [{"kind": "explorer", "ref": "tests"}],
                "images": [],
                "steps": steps,
            }
        ]
    }
    validate_file(document, "generated")


def test_without_lifecycle_there_is_nothing_to_explore() -> None:
    with pytest.raises(ExploreError, match="lifecycle"):
        sequence_strategy(frozenset({"probe"}))


# -- comparing answers ---------------------------------------------------------------------


def answer(rc: int, code: str | None = None, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"rc": rc, **extra}
    if code is not None:
        result["error"] = {"code": code, "message": "a message"}
    return result


def layer(name: str, index: int, fmt: str = "qcow2") -> dict[str, Any]:
    return {"filename": f"$DIR/{name}", "format": fmt, "index": index, "type": "file"}


def test_compare_reads_rc_error_code_and_chain_as_judge_does() -> None:
    chain = [layer("top.qcow2", 0), layer("base.qcow2", 1)]
    same = answer(0, chain=chain, terminated=True)
    assert compare(same, dict(same)) is None
    # Messages, and layer keys the runner does not compare, may differ.
    assert compare(answer(-1, "backing-missing"), answer(-1, "backing-missing")) is None
    block_top = [{**chain[0], "type": "block"}, chain[1]]
    assert compare(answer(0, chain=block_top, terminated=True), same) is None
    assert compare(answer(0, "backing-missing"), answer(-1, "backing-missing")) == (
        "expected rc -1 with backing-missing, got rc 0 (backing-missing: a message)"
    )
    assert compare(answer(-1, "backing-loop"), answer(-1, "too-deep")) == (
        "expected error too-deep, got backing-loop"
    )
    renumbered = [chain[0], layer("base.qcow2", 2)]
    assert "layer 1 index" in str(compare(answer(0, chain=renumbered, terminated=True), same))
    assert "terminated" in str(compare(answer(0, chain=chain, terminated=False), same))
    assert compare(answer(0, "backing-missing"), answer(0)) == (
        "expected no error, got backing-missing"
    )


def test_compare_counts_a_missing_answer_on_one_side_only() -> None:
    silent = {"rc": None, UNANSWERED: "the process exited"}
    assert compare(silent, answer(0)) == "the implementation did not answer: the process exited"
    assert compare(answer(0), silent) == "the oracle did not answer: the process exited"
    assert compare(silent, dict(silent)) is None


class CrashesOnPivot(ReferenceAdapter):
    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "pivot":
            raise AdapterError("the process exited")
        return super().call(op, args)


def test_an_implementation_that_does_not_answer_is_a_difference(scratch: Path) -> None:
    result = explore(
        CrashesOnPivot("libvirt-modern"),
        ReferenceAdapter("libvirt-modern"),
        max_examples=EXAMPLES,
        seed=1,
        out_dir=None,
        workdir=scratch,
    )
    assert result.finding is not None
    assert result.finding.parting_step["op"] == "pivot"
    assert result.finding.implementation_answer[UNANSWERED] == "the process exited"
    assert len(result.finding.steps) <= 3


# -- clean-up, database, files -------------------------------------------------------------


class Interrupted(ReferenceAdapter):
    """Ctrl-C arrives in the middle of the 40th call; every end_case is counted."""

    ended = 0

    def __init__(self) -> None:
        super().__init__("libvirt-modern")
        self.calls = 0

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 40:
            raise KeyboardInterrupt
        return super().call(op, args)

    def end_case(self) -> None:
        type(self).ended += 1
        super().end_case()


def test_an_interrupted_exploration_cleans_up_both_sides(scratch: Path) -> None:
    oracle = ReferenceAdapter("libvirt-modern")
    with pytest.raises(KeyboardInterrupt):
        explore(Interrupted(), oracle, max_examples=100, seed=1, out_dir=None, workdir=scratch)
    assert Interrupted.ended >= 1
    assert oracle.hypervisor.domains == {}
    assert list(scratch.iterdir()) == []


def test_the_example_database_is_used_locally_without_a_seed_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CI", raising=False)
    local = hypothesis_settings(10, None, tmp_path)
    assert isinstance(local.database, DirectoryBasedExampleDatabase)
    assert not local.derandomize
    seeded = hypothesis_settings(10, 5, tmp_path)
    assert seeded.database is None and not seeded.derandomize
    monkeypatch.setenv("CI", "true")
    in_ci = hypothesis_settings(10, None, tmp_path)
    assert in_ci.database is None
    assert in_ci.derandomize
    assert hypothesis_settings(10, 5, tmp_path).database is None


def a_finding() -> Finding:
    create = {
        "op": "create",
        "domain": "guest",
        "disks": [{"target": "vda", "path": "$DIR/top.qcow2", "format": "qcow2"}],
    }
    fault = {"op": "fault", "fault": "delete", "path": "$DIR/base.qcow2"}
    determine = {"op": "determine-chain", "domain": "guest", "target": "vda", "force": True}
    impl = answer(0, "backing-missing", chain=None)
    oracle = answer(-1, "backing-missing", chain=None)
    return Finding(
        steps=(create, fault, determine),
        parting_index=2,
        implementation_answer=impl,
        oracle_answer=oracle,
        problem="expected rc -1 with backing-missing, got rc 0",
        answers=((answer(0), answer(0)), (answer(0), answer(0)), (impl, oracle)),
    )


def test_a_found_case_never_replaces_a_file(tmp_path: Path) -> None:
    impl, oracle = ReferenceAdapter("seed-v2").info, ReferenceAdapter("libvirt-1.0").info
    first = write_finding(a_finding(), impl, oracle, tmp_path, "tests")
    second = write_finding(a_finding(), impl, oracle, tmp_path, "tests")
    assert first != second
    assert second.name == first.name.replace(".json", "-2.json")
    ids = [json.loads(path.read_text())["cases"][0]["id"] for path in (first, second)]
    assert ids == [first.stem, second.stem]
    [case] = load_cases(json.loads(first.read_text()), "found")
    assert case.steps[-1]["expect"] == {"default": {"error": "backing-missing", "chain": None}}


def test_replay_runs_both_sides_and_marks_where_they_part(tmp_path: Path) -> None:
    impl, oracle = ReferenceAdapter("seed-v2"), ReferenceAdapter("libvirt-1.0")
    path = write_finding(a_finding(), impl.info, oracle.info, tmp_path, "tests")
    cases = explorer.load_case_file(path)
    [parted] = replay(cases, impl, oracle, cache_root=tmp_path / "cache")
    assert parted.trace.parting == 2
    assert parted.trace.exchanges[2].implementation["rc"] == 0
    [agreed] = replay(cases, ReferenceAdapter("libvirt-1.0"), oracle, tmp_path / "cache")
    assert agreed.trace.parting is None
    assert len(agreed.trace.exchanges) == 3


# -- the command line ----------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_explore_writes_the_difference_and_replay_shows_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "found"
    status, out, err = run_cli(
        capsys,
        "explore",
        "--impl",
        "reference:seed-v2",
        "--oracle",
        "reference:libvirt-1.0",
        "--seed",
        "2",
        "--max-examples",
        str(EXAMPLES),
        "--out",
        str(out_dir),
    )
    assert status == 1, err
    assert "they part at step" in out
    [written] = out_dir.iterdir()
    assert f"written: {written}" in out
    assert "Traceback" not in err
    status, out, _ = run_cli(capsys, "replay", str(written), "--impl", "reference:seed-v2")
    assert status == 1
    marked = [line for line in out.splitlines() if line.startswith(">")]
    assert len(marked) == 1
    assert "they part here" in out
    status, out, _ = run_cli(capsys, "replay", str(written), "--impl", "reference:libvirt-1.0")
    assert status == 0
    assert "they agree on every step" in out


def test_replay_shows_both_messages_where_they_part(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # libvirt 9.0 refuses a relative overlay before it looks the disk up; 2012 did not.
    case = {
        "id": "found.relative-overlay-of-a-missing-disk",
        "description": "a relative overlay for a disk the domain lacks",
        "provenance": [{"kind": "explorer", "ref": "manual"}],
        "images": [{"spec": {"name": "one", "layers": [{"name": "top.qcow2", "format": "qcow2"}]}}],
        "steps": [
            {"op": "create", "domain": "g", "disks": [{"target": "vda", "path": "$DIR/top.qcow2"}]},
            {"op": "snapshot", "domain": "g", "target": "vdb", "overlay": "s.qcow2"},
        ],
    }
    written = tmp_path / "found.json"
    written.write_text(json.dumps({"description": "one difference in wording", "cases": [case]}))
    argv = ["replay", str(written), "--impl", "reference:libvirt-1.0"]
    status, out, _ = run_cli(capsys, *argv, "--oracle", "reference:libvirt-modern")
    assert status == 1
    lines = out.splitlines()
    says = [line.strip() for line in lines[lines.index(">  2  snapshot g vdb overlay=s.qcow2") :]]
    assert says[3:6] == [
        "implementation says: no disk named 'vdb'",
        "oracle says: disk snapshot image path 's.qcow2' must be absolute",
        "they part here: expected error invalid-path, got no-such-disk",
    ]


def test_cli_explore_takes_the_implementations_own_profile_as_oracle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["explore", "--impl", "reference:seed-v2", "--seed", "1", "--max-examples", "20"]
    status, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "found"))
    assert status == 0, err
    assert "against the oracle reference (seed-v2)" in err
    assert out.startswith("no difference: ")
    assert not (tmp_path / "found").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explore", "--impl", "no-such-thing"], "unknown implementation"),
        (["explore", "--impl", "reference:no-such-profile"], "unknown profile"),
        (["explore", "--impl", "qemu-img"], "lifecycle"),
        (["explore", "--impl", "reference", "--max-examples", "0"], "at least 1"),
        (["replay", "/no/such/file.json", "--impl", "reference"], "No such file"),
        (["explore", "--impl", "reference", "--out", "/dev/null"], "not a directory"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert message in err


def test_cli_replay_of_a_file_that_is_not_a_case_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cases": [{"id": "nope"}]}))
    status, _, err = run_cli(capsys, "replay", str(bad), "--impl", "reference")
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err


def test_sequences_go_to_ram_only_when_no_other_process_reads_their_files() -> None:
    reference = ReferenceAdapter()
    ram = explorer.RAM_SCRATCH
    ram_usable = ram.is_dir() and os.access(ram, os.W_OK | os.X_OK)
    expected = ram if ram_usable else None
    assert explorer.scratch_root(reference, CrashesOnPivot()) == expected

    class AnotherProcess:
        """Stands for a cmd: or libvirt adapter: its files must be where others can see them."""

        info = reference.info

    assert explorer.scratch_root(reference, AnotherProcess()) is None  # type: ignore[arg-type]
