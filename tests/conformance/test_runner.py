"""The runner's judgement, selection, known failures and reports, on small cases."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from conformance.adapters.base import AdapterError, ImplementationInfo
from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import CatalogueError, load_cases
from conformance.expectations import ExpectationsError, KnownFailure, load_expectations
from conformance.reports import RunReport, compare, markdown, write_json, write_junit
from conformance.run_command import select, verdict_of
from conformance.runner import CaseResult, Runner, Status, judge, substitute

PAIR = {"corpus": "chains/qcow2-raw-relative"}


def case(steps: list[dict[str, Any]], images: list[dict[str, Any]] | None = None, **extra: Any):
    document = {
        "cases": [
            {
                "id": extra.pop("id", "probe.test.case"),
                "description": "a case made by the runner's tests",
                "provenance": [{"kind": "reference", "ref": "tests"}],
                "images": images if images is not None else [PAIR],
                "steps": steps,
                **extra,
            }
        ]
    }
    return load_cases(document, "inline")[0]


def probe_step(expect: dict[str, Any]) -> dict[str, Any]:
    return {"op": "probe", "path": "$DIR/top.qcow2", "format": "qcow2", "expect": expect}


class CrashingAdapter(ReferenceAdapter):
    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        raise AdapterError("the process exited")


def test_judge_accepts_the_expected_error_and_names_a_wrong_one() -> None:
    answer = {"rc": -1, "error": {"code": "backing-missing", "message": "gone"}}
    assert judge(answer, {"error": "backing-missing"}) is None
    assert (
        judge(answer, {"error": "backing-loop"})
        == "expected error backing-loop, got backing-missing"
    )
    assert judge(answer, {"rc": 0}) == "expected rc 0, got rc -1 (backing-missing: gone)"


def test_judge_compares_only_the_layer_keys_given() -> None:
    answer = {
        "rc": 0,
        "chain": [{"filename": "a", "format": "qcow2", "index": 0}],
        "terminated": True,
    }
    assert judge(answer, {"chain": [{"format": "qcow2"}], "terminated": True}) is None
    assert judge(answer, {"chain": [{"format": "raw"}]}) == (
        "layer 0 format: expected 'raw', got 'qcow2'"
    )
    assert judge(answer, {"chain": None}) == "expected chain none, got [a]"


def test_judge_seed_forced_failure_is_rc_0_with_an_error() -> None:
    answer = {"rc": 0, "error": {"code": "backing-missing", "message": "x"}, "chain": None}
    assert judge(answer, {"rc": 0, "error": "backing-missing", "chain": None}) is None
    assert judge(answer, {"error": "backing-missing"}) is not None


def test_substitute_replaces_the_case_directory_everywhere(tmp_path: Path) -> None:
    step = {"disks": [{"path": "$DIR/a.qcow2"}], "expect": {"default": {"chain": []}}}
    assert substitute(step, tmp_path)["disks"][0]["path"] == f"{tmp_path}/a.qcow2"


def test_a_passing_and_a_failing_case_against_the_reference() -> None:
    runner = Runner(ReferenceAdapter("libvirt-modern"), "libvirt-modern")
    passing = case([probe_step({"default": {"chain": [{"format": "qcow2"}, {"format": "raw"}]}})])
    failing = case([probe_step({"default": {"error": "backing-loop"}})])
    assert runner.run(passing).status is Status.PASSED
    result = runner.run(failing)
    assert result.status is Status.FAILED
    assert result.message.startswith("step 1 (probe): expected rc -1 with backing-loop")


def test_missing_capability_skips_with_the_reason() -> None:
    runner = Runner(ReferenceAdapter("qemu"), "qemu")
    lifecycle = case([{"op": "start", "domain": "vm"}], id="lifecycle.test.start")
    result = runner.run(lifecycle)
    assert result.status is Status.SKIPPED
    assert result.message == "needs lifecycle"


def test_an_implementation_that_does_not_answer_is_an_error_and_cleans_up(
    tmp_path: Path,
) -> None:
    runner = Runner(CrashingAdapter("libvirt-modern"), "libvirt-modern")
    result = runner.run(case([probe_step({"default": {"rc": 0}})]))
    assert result.status is Status.ERROR
    assert "did not answer" in result.message


def test_case_directories_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    Runner(ReferenceAdapter(), "libvirt-modern").run(case([probe_step({"default": {"rc": 0}})]))
    assert [path for path in tmp_path.iterdir() if path.name.startswith("chainsuite-case-")] == []


def test_schema_refuses_a_case_with_an_unknown_operation() -> None:
    with pytest.raises(CatalogueError, match="inline: at cases/0/steps/0/op"):
        case([{"op": "teleport"}])


def test_selection_by_substring_and_glob() -> None:
    cases = (case([{"op": "probe", "path": "x"}], id="probe.a.one"),)
    assert select(cases, ["a.on"]) == list(cases)
    assert select(cases, ["probe.*.one"]) == list(cases)
    assert select(cases, ["lifecycle.*"]) == []


def test_known_failures_are_strict() -> None:
    known = {"probe.a": KnownFailure("probe.a", "differs on purpose")}
    assert verdict_of(CaseResult("probe.a", Status.FAILED, "x"), known).outcome == "xfail"
    assert verdict_of(CaseResult("probe.a", Status.PASSED), known).outcome == "xpass"
    assert verdict_of(CaseResult("probe.b", Status.PASSED), known).outcome == "passed"


def test_expectations_file_needs_ids_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "known.json"
    path.write_text(json.dumps({"known-failures": [{"id": "probe.a"}]}))
    with pytest.raises(ExpectationsError, match="needs an 'id' and a 'reason'"):
        load_expectations(path)


def test_reports_summary_junit_markdown_and_compare(tmp_path: Path) -> None:
    info = ImplementationInfo("demo", "1", "libvirt-modern", frozenset({"probe"}))
    results = [
        CaseResult("probe.a", Status.PASSED),
        CaseResult("probe.b", Status.FAILED, "step 1 (probe): wrong"),
        CaseResult("lifecycle.c", Status.SKIPPED, "needs lifecycle"),
    ]
    report = RunReport(info, "libvirt-modern", 1, tuple(verdict_of(r, {}) for r in results), "t")
    assert report.summary_line() == "1 passed, 1 failed, 1 skipped"
    write_junit(report, tmp_path / "junit.xml")
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("tests") == "3"
    assert suite.get("failures") == "1"
    assert "`probe.b` | failed" in markdown(report)
    write_json(report, tmp_path / "before.json")
    after = json.loads((tmp_path / "before.json").read_text())
    after["cases"][1]["outcome"] = "passed"
    before = json.loads((tmp_path / "before.json").read_text())
    assert compare(before, after) == [("probe.b", "failed", "passed")]
