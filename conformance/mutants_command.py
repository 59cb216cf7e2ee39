"""``chainsuite mutants``: the catalogue against every mutant of the reference, and the score."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import Case, CatalogueError, load
from conformance.mutants import (
    MUTANTS,
    Kill,
    KillKind,
    Mutant,
    MutantAdapter,
    MutantResult,
    reference_passes,
    score,
)

EXPLORE_MODULE = "conformance.explore"


def run_mutants(args: argparse.Namespace) -> int:
    """Prints the table of mutants; exit status 0 when every one was killed, 1 if not, 2 on
    a usage error."""
    mutants, problem = _selected(args.mutant)
    if problem is not None:
        print(f"mutants: {problem}", file=sys.stderr)
        return 2
    if args.list:
        for mutant in mutants:
            print(f"{mutant.id:<42} {', '.join(mutant.profiles)}")
            print(f"{'':<42} {mutant.defect} [{mutant.realisation.value}]")
            print(f"{'':<42} {mutant.provenance}")
        return 0
    try:
        catalogue = load()
    except CatalogueError as error:
        print(f"mutants: {error}", file=sys.stderr)
        return 2
    rows = [
        (mutant, profile)
        for mutant in mutants
        for profile in mutant.profiles
        if not args.profile or profile in args.profile
    ]
    if not rows:
        print("mutants: no mutant applies to the profiles asked for", file=sys.stderr)
        return 2
    say = _progress(args.quiet)
    passing = _reference_passes(catalogue.cases, sorted({profile for _, profile in rows}), say)
    results: list[MutantResult] = []
    width = len(str(len(rows)))
    for number, (mutant, profile) in enumerate(rows, start=1):
        judged = [case for case in catalogue.cases if case.id in passing[profile]]
        result = score(mutant, profile, judged, every_case=args.every_case)
        results.append(result)
        say(f"[{number:>{width}}/{len(rows)}] {mutant.id} ({profile}): {_verdict(result)}")
    if args.explore:
        results = _explore_survivors(results, args.explore, args.seed, args.found, say)
    print(table(results))
    if args.json:
        document = report(results, catalogue.version)
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(result.killed for result in results) else 1


def _selected(ids: Sequence[str] | None) -> tuple[list[Mutant], str | None]:
    if not ids:
        return list(MUTANTS), None
    known = {mutant.id: mutant for mutant in MUTANTS}
    unknown = [mutant_id for mutant_id in ids if mutant_id not in known]
    if unknown:
        return [], f"no mutant {', '.join(unknown)} (see: chainsuite mutants --list)"
    return [known[mutant_id] for mutant_id in ids], None


def _progress(quiet: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    return say


def _reference_passes(
    cases: Sequence[Case], profiles: list[str], say: Callable[[str], None]
) -> dict[str, set[str]]:
    """Per profile, the cases the unmutated reference passes: only those can kill a mutant."""
    passing = {}
    for profile in profiles:
        passing[profile] = reference_passes(cases, profile)
        say(
            f"reference ({profile}): passes {len(passing[profile])} of {len(cases)} cases, "
            "the ones that can kill a mutant"
        )
    return passing


def _verdict(result: MutantResult) -> str:
    if result.kill is None:
        return f"survived {result.cases_run} cases"
    return f"killed by {result.kill.by}"


def _explore_survivors(
    results: list[MutantResult],
    max_examples: int,
    seed: int,
    found: str | None,
    say: Callable[[str], None],
) -> list[MutantResult]:
    """Each survivor explored against the reference of its profile, when the explorer exists."""
    survivors = [result for result in results if not result.killed]
    if not survivors:
        return results
    explore = _explorer()
    if explore is None:
        say(f"mutants: {EXPLORE_MODULE} is not there yet; --explore skipped")
        return results
    explored: list[MutantResult] = []
    for result in results:
        if result.killed:
            explored.append(result)
            continue
        kill = _explore_one(explore, result, max_examples, seed, found, say)
        explored.append(
            result
            if kill is None
            else MutantResult(
                result.mutant, result.profile, kill, result.killing_cases, result.cases_run
            )
        )
    return explored


def _explorer() -> Callable[..., Any] | None:
    """``conformance.explore.explore``, imported only when asked for (it may not exist)."""
    try:
        module = importlib.import_module(EXPLORE_MODULE)
    except ImportError:
        return None
    explore: Callable[..., Any] | None = getattr(module, "explore", None)
    return explore


def _explore_one(
    explore: Callable[..., Any],
    result: MutantResult,
    max_examples: int,
    seed: int,
    found: str | None,
    say: Callable[[str], None],
) -> Kill | None:
    mutant, profile = result.mutant, result.profile
    implementation = MutantAdapter(mutant, profile)
    oracle = ReferenceAdapter(profile)
    try:
        outcome = explore(
            implementation,
            oracle,
            max_examples=max_examples,
            seed=seed,
            out_dir=Path(found) if found else None,
        )
    except Exception as error:
        say(f"explore {mutant.id} ({profile}): the explorer stopped: {error}")
        return None
    finally:
        implementation.close()
        oracle.close()
    finding = getattr(outcome, "finding", None)
    if finding is None:
        say(f"explore {mutant.id} ({profile}): no difference in {max_examples} sequences")
        return None
    steps = len(getattr(finding, "steps", ()))
    problem = str(getattr(finding, "problem", ""))
    say(f"explore {mutant.id} ({profile}): a difference after {steps} steps: {problem}")
    return Kill(KillKind.EXPLORATION, f"explored sequence of {steps} steps", problem)


def table(results: Sequence[MutantResult]) -> str:
    """The score as a table: mutant, profile, killed or survived, what killed it; then totals."""
    header = ("MUTANT", "PROFILE", "RESULT", "KILLED BY")
    rows = [header]
    for result in results:
        if result.kill is not None:
            by = result.kill.by
            if result.kill.kind is KillKind.CASE and len(result.killing_cases) > 1:
                by += f" (+{len(result.killing_cases) - 1} more)"
            rows.append((result.mutant.id, result.profile, "killed", by))
        else:
            why = f"({result.mutant.note})" if result.mutant.note else "-"
            rows.append((result.mutant.id, result.profile, "SURVIVED", why))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    ]
    lines.append("")
    lines.append(summary_line(results))
    return "\n".join(lines)


def summary_line(results: Sequence[MutantResult]) -> str:
    totals = _totals(results)
    return (
        f"{totals['killed']} of {totals['runs']} mutant runs killed ({totals['percent']:.1f}%): "
        f"{totals['by_catalogue']} by catalogue cases, {totals['by_exploration']} by exploration; "
        f"{totals['survived']} survived ({totals['mutants']} mutants)"
    )


def _totals(results: Sequence[MutantResult]) -> dict[str, Any]:
    killed = [result for result in results if result.kill is not None]
    by_catalogue = sum(1 for result in killed if result.kill and result.kill.kind is KillKind.CASE)
    runs = len(results)
    return {
        "mutants": len({result.mutant.id for result in results}),
        "runs": runs,
        "killed": len(killed),
        "by_catalogue": by_catalogue,
        "by_exploration": len(killed) - by_catalogue,
        "survived": runs - len(killed),
        "percent": 100.0 * len(killed) / runs if runs else 0.0,
    }


def report(results: Sequence[MutantResult], catalogue_version: int) -> dict[str, Any]:
    """The table as JSON."""
    totals = _totals(results)
    totals["percent"] = round(totals["percent"], 1)
    return {
        "catalogue_version": catalogue_version,
        "summary": totals,
        "results": [result.to_json() for result in results],
    }
