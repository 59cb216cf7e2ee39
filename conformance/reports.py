"""Reports of a run: JSON (for ``chainsuite compare``), JUnit XML and a Markdown summary."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conformance.adapters.base import ImplementationInfo
from conformance.runner import CaseResult, Status

XFAIL = "xfail"
XPASS = "xpass"


@dataclass(frozen=True)
class Verdict:
    """A case's result after the known-failures list is applied."""

    result: CaseResult
    outcome: str
    """passed, failed, skipped, error, xfail (a known failure) or xpass (a known one passed)."""
    reason: str = ""

    @property
    def counts_as_failure(self) -> bool:
        return self.outcome in ("failed", "error", XPASS)


@dataclass(frozen=True)
class RunReport:
    implementation: ImplementationInfo
    expect_profile: str
    catalogue_version: int
    verdicts: tuple[Verdict, ...]
    started: str

    def counts(self) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0, XFAIL: 0, XPASS: 0}
        for verdict in self.verdicts:
            counts[verdict.outcome] += 1
        return counts

    def summary_line(self) -> str:
        """``N passed, N failed, N skipped`` (errors and unexpected passes count as failed)."""
        counts = self.counts()
        failed = counts["failed"] + counts["error"] + counts[XPASS]
        line = f"{counts['passed']} passed, {failed} failed, {counts['skipped']} skipped"
        if counts[XFAIL]:
            line += f", {counts[XFAIL]} xfailed"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "implementation": self.implementation.to_json(),
            "expect-profile": self.expect_profile,
            "catalogue-version": self.catalogue_version,
            "started": self.started,
            "summary": self.counts(),
            "cases": [
                {**verdict.result.to_json(), "outcome": verdict.outcome, "reason": verdict.reason}
                for verdict in self.verdicts
            ],
        }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(report: RunReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def write_junit(report: RunReport, path: Path) -> None:
    counts = report.counts()
    suite = ElementTree.Element(
        "testsuite",
        name=f"chainsuite {report.implementation.name} ({report.expect_profile})",
        tests=str(len(report.verdicts)),
        failures=str(counts["failed"] + counts[XPASS]),
        errors=str(counts["error"]),
        skipped=str(counts["skipped"] + counts[XFAIL]),
        timestamp=report.started,
    )
    for verdict in report.verdicts:
        case_id = verdict.result.case_id
        element = ElementTree.SubElement(
            suite,
            "testcase",
            classname=case_id.rsplit(".", 1)[0],
            name=case_id,
            time=f"{verdict.result.seconds:.4f}",
        )
        message = verdict.reason or verdict.result.message
        if verdict.outcome in ("failed", XPASS):
            ElementTree.SubElement(element, "failure", message=message)
        elif verdict.outcome == "error":
            ElementTree.SubElement(element, "error", message=message)
        elif verdict.outcome in ("skipped", XFAIL):
            ElementTree.SubElement(element, "skipped", message=message)
    ElementTree.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)


def markdown(report: RunReport) -> str:
    info = report.implementation
    lines = [
        f"# chainsuite: {info.name} {info.version}",
        "",
        f"Judged by the `{report.expect_profile}` expectations of catalogue version "
        f"{report.catalogue_version}, {report.started}.",
        "",
        f"**{report.summary_line()}**",
        "",
        "| case | outcome | detail |",
        "|---|---|---|",
    ]
    for verdict in report.verdicts:
        if verdict.outcome == Status.PASSED:
            continue
        detail = (verdict.reason or verdict.result.message).replace("|", "\\|")
        lines.append(f"| `{verdict.result.case_id}` | {verdict.outcome} | {detail} |")
    return "\n".join(lines) + "\n"


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Cases whose outcome changed between two JSON reports: (id, before, after)."""
    old = {case["id"]: case["outcome"] for case in before.get("cases", [])}
    new = {case["id"]: case["outcome"] for case in after.get("cases", [])}
    changes = []
    for case_id in sorted(old.keys() | new.keys()):
        was, now_is = old.get(case_id, "absent"), new.get(case_id, "absent")
        if was != now_is:
            changes.append((case_id, was, now_is))
    return changes
