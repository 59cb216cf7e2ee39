"""``chainsuite run``, ``impls``, ``cases`` and ``compare``: the suite from the command line."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

from conformance.adapters.base import AdapterError
from conformance.catalogue import Case, CatalogueError, load
from conformance.expectations import ExpectationsError, KnownFailure, load_expectations
from conformance.reports import (
    XFAIL,
    XPASS,
    RunReport,
    Verdict,
    compare,
    markdown,
    now,
    write_json,
    write_junit,
)
from conformance.runner import CaseResult, Runner, Status


def select(cases: tuple[Case, ...], patterns: list[str] | None) -> list[Case]:
    """Cases whose id matches any pattern: a glob if it has wildcards, else a substring."""
    if not patterns:
        return list(cases)

    def matches(case_id: str, pattern: str) -> bool:
        if any(char in pattern for char in "*?["):
            return fnmatch.fnmatchcase(case_id, pattern)
        return pattern in case_id

    return [case for case in cases if any(matches(case.id, pattern) for pattern in patterns)]


def verdict_of(result: CaseResult, known: dict[str, KnownFailure]) -> Verdict:
    """A case's verdict once the known failures are applied (strictly: a pass is news)."""
    failure = known.get(result.case_id)
    if failure is None:
        return Verdict(result, result.status.value)
    if result.status in (Status.FAILED, Status.ERROR):
        return Verdict(result, XFAIL, f"known failure: {failure.reason}")
    if result.status is Status.PASSED:
        return Verdict(result, XPASS, f"listed as a known failure but passed: {failure.reason}")
    return Verdict(result, result.status.value, result.message)


def run_suite(args: argparse.Namespace) -> int:
    from conformance.adapters.registry import open_adapter

    try:
        catalogue = load()
        known = load_expectations(Path(args.expectations)) if args.expectations else {}
        spec = args.impl
        if spec == "reference" and args.profile:
            spec = f"reference:{args.profile}"
        adapter = open_adapter(spec, timeout=args.timeout)
    except (CatalogueError, ExpectationsError, AdapterError) as error:
        print(f"run: {error}", file=sys.stderr)
        return 2
    cases = select(catalogue.cases, args.k)
    if not cases:
        print(f"run: no case matches {args.k}", file=sys.stderr)
        return 2
    info = adapter.info
    expect = args.expect or info.profile
    print(
        f"{info.name} {info.version}, profile {info.profile}; judged by {expect} "
        f"(catalogue version {catalogue.version}, {len(cases)} cases)",
        file=sys.stderr,
    )
    started = now()
    runner = Runner(adapter, expect)
    verdicts = []
    try:
        for case in cases:
            verdict = verdict_of(runner.run(case), known)
            verdicts.append(verdict)
            if verdict.outcome not in ("passed",) or args.verbose:
                detail = verdict.reason or verdict.result.message
                print(f"{verdict.outcome.upper():8} {case.id}  {detail}", file=sys.stderr)
    finally:
        adapter.close()
    report = RunReport(info, expect, catalogue.version, tuple(verdicts), started)
    if args.json:
        write_json(report, Path(args.json))
    if args.junit:
        write_junit(report, Path(args.junit))
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
    print(report.summary_line())
    return 1 if any(verdict.counts_as_failure for verdict in verdicts) else 0


def smoke_check(args: argparse.Namespace) -> int:
    from conformance.smoke import smoke

    problems = smoke(args.impl, args.timeout)
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    print(
        f"{args.impl}: "
        + ("speaks the protocol" if not problems else f"{len(problems)} problem(s)")
    )
    return 1 if problems else 0


def list_impls(_args: argparse.Namespace) -> int:
    from conformance.adapters.registry import known_adapters, open_adapter

    for spec, description in known_adapters():
        line = f"{spec:<32} {description}"
        try:
            adapter = open_adapter(spec)
        except AdapterError as error:
            print(f"{line}\n{'':<32} unavailable: {error}")
            continue
        info = adapter.info
        adapter.close()
        print(f"{line}\n{'':<32} profile {info.profile}: {', '.join(sorted(info.capabilities))}")
    return 0


def list_cases(args: argparse.Namespace) -> int:
    try:
        catalogue = load()
    except CatalogueError as error:
        print(f"cases: {error}", file=sys.stderr)
        return 2
    if args.id:
        try:
            case = catalogue.get(args.id)
        except KeyError:
            print(f"cases: no case {args.id!r}", file=sys.stderr)
            return 1
        print(json.dumps(case.to_json(), indent=2))
        return 0
    for case in catalogue.cases:
        print(f"{case.id:<60} {case.description[:100]}")
    print(f"{len(catalogue.cases)} cases, catalogue version {catalogue.version}", file=sys.stderr)
    return 0


def compare_reports(args: argparse.Namespace) -> int:
    try:
        before = json.loads(Path(args.before).read_text())
        after = json.loads(Path(args.after).read_text())
    except (OSError, ValueError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    changes = compare(before, after)
    for case_id, was, now_is in changes:
        print(f"{case_id:<60} {was} -> {now_is}")
    print(f"{len(changes)} case(s) changed outcome")
    return 0
