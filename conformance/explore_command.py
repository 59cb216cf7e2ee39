"""``chainsuite explore`` and ``chainsuite replay``: the differential explorer from a shell.

Exit status of ``explore``: 0 when no difference was found, 1 when one was (and
written), 2 for a usage error. Of ``replay``: 0 when both sides agree on every
step, 1 when they still part, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conformance.adapters.base import Adapter, AdapterError

if TYPE_CHECKING:
    from conformance.explore import Finding, Replay

PROGRESS_EVERY_SECONDS = 2.0


class _UsageError(Exception):
    """Bad input: said in one line, exit status 2."""


def _open(spec: str, role: str, timeout: float) -> Adapter:
    from conformance.adapters.registry import open_adapter

    try:
        return open_adapter(spec, timeout=timeout)
    except AdapterError as error:
        raise _UsageError(f"{role}: {error}") from None


def _default_oracle(implementation: Adapter) -> str:
    return f"reference:{implementation.info.profile}"


def _open_pair(
    impl_spec: str, oracle_spec: str | None, timeout: float
) -> tuple[Adapter, Adapter, str]:
    implementation = _open(impl_spec, "--impl", timeout)
    try:
        spec = oracle_spec or _default_oracle(implementation)
        role = "--oracle" if oracle_spec else f"the default oracle {spec} (give --oracle)"
        return implementation, _open(spec, role, timeout), spec
    except BaseException:
        implementation.close()
        raise


def run_explore(args: argparse.Namespace) -> int:
    try:
        from conformance import explore
    except ImportError as error:
        print(f"explore: needs Hypothesis ({error}); pip install hypothesis", file=sys.stderr)
        return 2
    if args.max_examples < 1 or args.max_steps < 1:
        print("explore: --max-examples and --max-steps must be at least 1", file=sys.stderr)
        return 2
    if Path(args.out).exists() and not Path(args.out).is_dir():
        # Said now, not after an exploration whose finding could not be written.
        print(f"explore: --out {args.out}: not a directory", file=sys.stderr)
        return 2
    try:
        implementation, oracle, oracle_spec = _open_pair(args.impl, args.oracle, args.timeout)
    except _UsageError as error:
        print(f"explore: {error}", file=sys.stderr)
        return 2
    common = implementation.info.capabilities & oracle.info.capabilities
    if "lifecycle" not in common:
        implementation.close()
        oracle.close()
        print(
            "explore: both sides need the 'lifecycle' capability "
            f"({args.impl} and {oracle_spec} do not share it)",
            file=sys.stderr,
        )
        return 2
    reproduce = (
        f"chainsuite explore --impl {shlex.quote(args.impl)} --oracle {shlex.quote(oracle_spec)}"
    )
    if args.seed is not None:
        reproduce += f" --seed {args.seed}"
    impl_info, oracle_info = implementation.info, oracle.info
    print(
        f"explore: {impl_info.name} ({impl_info.profile}) against the oracle {oracle_info.name} "
        f"({oracle_info.profile}), up to {args.max_examples} sequences"
        + (f", seed {args.seed}" if args.seed is not None else ""),
        file=sys.stderr,
    )
    last_report = time.monotonic()

    def progress(sequences: int) -> None:
        nonlocal last_report
        now = time.monotonic()
        if not args.quiet and now - last_report >= PROGRESS_EVERY_SECONDS:
            last_report = now
            print(f"explore: {sequences} sequences run", file=sys.stderr)

    sequences_run = 0

    def counting(sequences: int) -> None:
        nonlocal sequences_run
        sequences_run = sequences
        progress(sequences)

    try:
        result = explore.explore(
            implementation,
            oracle,
            max_examples=args.max_examples,
            seed=args.seed,
            out_dir=Path(args.out),
            max_steps=args.max_steps,
            progress=counting,
            provenance_ref=reproduce,
        )
    except explore.ExploreError as error:
        print(f"explore: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"explore: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"explore: interrupted after {sequences_run} sequences", file=sys.stderr)
        return 130
    finally:
        implementation.close()
        oracle.close()
    for problem in sorted(set(result.cleanup_problems)):
        print(f"explore: warning: {problem}", file=sys.stderr)
    rate = f"{result.sequences} sequences in {result.seconds:.1f} s ({result.per_second:.0f}/s)"
    if result.finding is None:
        print(f"no difference: {rate}")
        return 0
    _print_finding(result.finding)
    print(f"{rate}, shrinking included")
    if result.finding.case_path is not None:
        path = shlex.quote(str(result.finding.case_path))
        print(f"written: {result.finding.case_path}")
        print(
            f"replay:  chainsuite replay {path} --impl {shlex.quote(args.impl)} "
            f"--oracle {shlex.quote(oracle_spec)}"
        )
    return 1


def _print_finding(finding: Finding) -> None:
    from conformance.explore import describe_answer, describe_step

    parting = finding.parting_index
    print(
        f"they part at step {parting + 1} of {len(finding.steps)} ({finding.parting_step['op']}):"
    )
    for index, step in enumerate(finding.steps):
        marker = ">" if index == parting else " "
        print(f"{marker} {index + 1:2}  {describe_step(step)}")
    print(f"        implementation: {describe_answer(finding.implementation_answer)}")
    print(f"        oracle:         {describe_answer(finding.oracle_answer)}")
    _print_messages(finding.implementation_answer, finding.oracle_answer)
    print(f"        {finding.problem}")


def _print_messages(implementation: dict[str, Any], oracle: dict[str, Any]) -> None:
    """Each side's error message at the step where they part: a code says what failed,
    the message often says which check did."""
    for side, answer in (("implementation", implementation), ("oracle", oracle)):
        error = answer.get("error")
        if isinstance(error, dict) and error.get("message"):
            print(f"        {side} says: {error['message']}")


def run_replay(args: argparse.Namespace) -> int:
    try:
        from conformance import explore
    except ImportError as error:
        print(f"replay: needs Hypothesis ({error}); pip install hypothesis", file=sys.stderr)
        return 2
    path = Path(args.file)
    try:
        cases = explore.load_case_file(path)
    except explore.ExploreError as error:
        print(f"replay: {error}", file=sys.stderr)
        return 2
    oracle_spec = args.oracle
    if oracle_spec is None:
        recorded = explore.observed_oracle(path)
        if recorded is not None and recorded.get("name") == "reference":
            oracle_spec = f"reference:{recorded.get('profile')}"
    try:
        implementation, oracle, oracle_spec = _open_pair(args.impl, oracle_spec, args.timeout)
    except _UsageError as error:
        print(f"replay: {error}", file=sys.stderr)
        return 2
    print(f"replay: {path} on {args.impl} and the oracle {oracle_spec}", file=sys.stderr)
    try:
        replays = explore.replay(cases, implementation, oracle)
    except explore.ExploreError as error:
        print(f"replay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("replay: interrupted", file=sys.stderr)
        return 130
    finally:
        implementation.close()
        oracle.close()
    parted = False
    for replayed in replays:
        parted |= _print_replay(replayed)
    return 1 if parted else 0


def _print_replay(replayed: Replay) -> bool:
    from conformance.explore import describe_answer, describe_step

    parting = replayed.trace.parting
    print(replayed.case_id)
    for index, exchange in enumerate(replayed.trace.exchanges):
        marker = ">" if index == parting else " "
        print(f"{marker} {index + 1:2}  {describe_step(exchange.step)}")
        print(f"        implementation: {describe_answer(exchange.implementation)}")
        print(f"        oracle:         {describe_answer(exchange.oracle)}")
        if index == parting:
            _print_messages(exchange.implementation, exchange.oracle)
            print(f"        they part here: {exchange.problem}")
    if parting is None:
        print("  they agree on every step")
        return False
    return True
