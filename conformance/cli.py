"""The ``chainsuite`` command.

Start-up time matters (``chainsuite probe`` is compared with qemu-img as a
whole process), so each subcommand imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

PROFILE_NAMES = ("seed-v2", "libvirt-1.0", "libvirt-modern", "qemu")
"""Kept here, not imported, so that argument parsing loads nothing else."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainsuite",
        description=(
            "Conformance and simulation suite for virtual-disk backing chains: how libvirt "
            "probes a disk's chain from image headers, caches it and re-probes it."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    probe = commands.add_parser(
        "probe",
        help="read a disk's backing chain from its image headers",
        description=(
            "Read the backing chain of the image at PATH from its headers, under the rules "
            "of a profile, without changing anything. Exit status: 0 with a chain, 1 when "
            "the rules refuse the chain (the first word on stderr is a stable error code), "
            "2 for a usage error."
        ),
    )
    probe.add_argument("path", metavar="PATH", help="the top image")
    probe.add_argument(
        "--format",
        "-f",
        metavar="FMT",
        help="the top image's format, as a disk definition would give it "
        "(default: unspecified, which each profile treats its own way)",
    )
    probe.add_argument(
        "--profile",
        "-p",
        choices=PROFILE_NAMES,
        default="libvirt-modern",
        help="whose rules to follow (default: %(default)s; 'qemu' answers as "
        "'qemu-img info --backing-chain' does)",
    )
    probe.add_argument(
        "--output",
        "-o",
        choices=("human", "json"),
        default="human",
        help="output format (default: %(default)s); json uses qemu-img's key names",
    )
    corpus = commands.add_parser(
        "corpus",
        help="build every image the suite needs into a directory, with a manifest",
        description="Build the corpus: real chains (made with qemu-img where it can, natively "
        "where it refuses or is too slow) and crafted images qemu-img will not make.",
    )
    corpus_commands = corpus.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    corpus_build = corpus_commands.add_parser(
        "build",
        help="build (or finish building) the corpus into DIR and write DIR/manifest.json",
        description="Build every corpus entry into DIR/chains/NAME or DIR/crafted/NAME and "
        "write DIR/manifest.json. Entries already built are kept, an interrupted build "
        "resumes, and a directory holding files the corpus did not make is never touched.",
    )
    corpus_build.add_argument("directory", metavar="DIR")
    corpus_build.add_argument(
        "--method",
        choices=("auto", "qemu-img", "native"),
        default="auto",
        help="how chains are made (default: %(default)s: qemu-img where it can)",
    )
    corpus_build.add_argument(
        "--only", metavar="GLOB", help="only entries whose KIND/NAME matches (e.g. 'chains/*')"
    )
    corpus_commands.add_parser("list", help="list the corpus entries and what each is for")

    run = commands.add_parser(
        "run",
        help="run the case catalogue against an implementation",
        description="Run the catalogue's cases against an implementation and judge each by a "
        "profile's expectations. Prints a line per case that did not pass and a final "
        "'N passed, N failed, N skipped'; exits 0 only if nothing failed.",
    )
    run.add_argument(
        "--impl",
        default="reference",
        help="reference[:PROFILE], qemu-img, python:MODULE:OBJECT, or 'cmd:COMMAND LINE' "
        "(see: chainsuite impls; default: %(default)s)",
    )
    run.add_argument("--profile", choices=PROFILE_NAMES, help="the reference's profile")
    run.add_argument(
        "--expect",
        choices=PROFILE_NAMES,
        help="judge by this profile's expectations (default: the implementation's own)",
    )
    run.add_argument(
        "-k",
        action="append",
        metavar="PATTERN",
        help="only cases whose id contains PATTERN (a glob if it has * ? [); repeatable",
    )
    run.add_argument("--expectations", metavar="FILE", help="known failures (JSON), strict")
    run.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    run.add_argument("--json", metavar="FILE", help="write a JSON report (for compare)")
    run.add_argument("--markdown", metavar="FILE", help="write a Markdown summary")
    run.add_argument("--verbose", "-v", action="store_true", help="a line for every case")
    run.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for one answer of the implementation (default: %(default)s)",
    )
    smoke = commands.add_parser(
        "smoke",
        help="check that an implementation speaks the protocol before running the suite",
        description="Check an implementation's handshake and replies against the protocol: "
        "a misbehaving adapter is told apart from a failing implementation.",
    )
    smoke.add_argument("--impl", required=True, help="an implementation spec (see: impls)")
    smoke.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")

    commands.add_parser("impls", help="list the implementation adapters and their capabilities")
    cases = commands.add_parser("cases", help="list the cases, or show one")
    cases.add_argument("id", nargs="?", metavar="ID")
    compare = commands.add_parser(
        "compare", help="which cases changed outcome between two JSON reports (baseline first)"
    )
    compare.add_argument("before", metavar="A.json")
    compare.add_argument("after", metavar="B.json")
    explore = commands.add_parser(
        "explore",
        help="look for operation sequences on which an implementation and an oracle differ",
        description="Run random sequences of lifecycle operations and faults on an "
        "implementation and on an oracle, compare their answers and cached chains after every "
        "step, shrink the first difference and write it as a case file (id found.*). Exit "
        "status: 0 when no difference was found, 1 when one was, 2 for a usage error.",
    )
    explore.add_argument("--impl", required=True, help="an implementation spec (see: impls)")
    explore.add_argument(
        "--oracle",
        metavar="IMPL",
        help="the implementation whose answers are right (default: reference:PROFILE, "
        "PROFILE being the implementation's)",
    )
    explore.add_argument(
        "--max-examples",
        type=int,
        default=200,
        metavar="N",
        help="sequences to try before shrinking (default: %(default)s)",
    )
    explore.add_argument(
        "--max-steps",
        type=int,
        default=20,
        metavar="N",
        help="operations per sequence after the set-up (default: %(default)s)",
    )
    explore.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="reproducible run from this seed (no example database is used then)",
    )
    explore.add_argument(
        "--out",
        default="found",
        metavar="DIR",
        help="where a found case is written, never over a file (default: ./%(default)s)",
    )
    explore.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for one answer of either side (default: %(default)s)",
    )
    explore.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    replay = commands.add_parser(
        "replay",
        help="re-run a found case on an implementation and an oracle, showing where they part",
        description="Run every step of a case file on both sides and print both answers per "
        "step, marking the first step where they part. Exit status: 0 when they agree, 1 when "
        "they part, 2 for a usage error.",
    )
    replay.add_argument("file", metavar="FILE")
    replay.add_argument("--impl", required=True, help="an implementation spec (see: impls)")
    replay.add_argument(
        "--oracle",
        metavar="IMPL",
        help="default: the reference oracle the file records, else reference:PROFILE",
    )
    replay.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for one answer of either side (default: %(default)s)",
    )
    explain = commands.add_parser(
        "explain",
        help="run one of the seed review's edge cases side by side under two profiles",
        description="Run an edge case the 2012 review raised (a failed forced re-probe, ...) "
        "on the simulator under each profile, on real images in a temporary directory, and "
        "show per step what each call returns, what the cache holds and what the user sees. "
        "Without EDGE-CASE, list them. Exit status: 0, or 2 for an unknown edge case or profile.",
    )
    explain.add_argument("edge_case", nargs="?", metavar="EDGE-CASE")
    explain.add_argument(
        "--profiles",
        default="seed-v2,libvirt-1.0",
        metavar="A,B",
        help="comma-separated profiles to compare (default: %(default)s; libvirt-modern too)",
    )
    explain.add_argument(
        "--output", "-o", choices=("text", "json"), default="text", help="default: %(default)s"
    )
    study = commands.add_parser(
        "study",
        help="count what each cache policy costs on generated VM lifetimes",
        description="Draw VM lifetimes from a seed (attaches, snapshots, pulls, commits, daemon "
        "restarts, stops; chains of 1-200 layers), run each on the simulated hypervisor under "
        "every cache policy, and write DIR/study.md, DIR/study.json and DIR/study.png (the plot "
        "needs matplotlib: pip install 'chainsuite[study]'). Refuses a DIR that holds results "
        "of an earlier study unless --force is given.",
    )
    study.add_argument(
        "--out", default="study", metavar="DIR", help="output directory (default: ./%(default)s)"
    )
    study.add_argument(
        "--seed", type=int, default=1, metavar="S", help="workload seed (default: %(default)s)"
    )
    study.add_argument(
        "--vms", type=int, default=50, metavar="N", help="VM lifetimes (default: %(default)s)"
    )
    study.add_argument("--force", action="store_true", help="overwrite an earlier study in DIR")
    study.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    bench = commands.add_parser(
        "bench",
        help="time the suite against its baselines (qemu-img, the catalogue runner)",
        description="Measure, in one run on this machine, each figure against its baseline "
        "measured in the same run (probe and build against qemu-img as whole processes, "
        "simulator operations/s, explorer sequences/s, catalogue run time per adapter) and "
        "print value, baseline, ratio and target per row; medians of several runs.",
    )
    bench.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and explorer sequences; no libvirt catalogue",
    )
    bench.add_argument(
        "--repeat", type=int, metavar="N", help="runs per median (default: 7; 2 with --quick)"
    )
    bench.add_argument(
        "--layers",
        metavar="N,N,...",
        help="probe chain depths (default: 10,100,1000; the probe target is read at the largest)",
    )
    bench.add_argument(
        "--build-layers", type=int, metavar="N", help="layers of the built chain (default: 1000)"
    )
    bench.add_argument(
        "--sequences", type=int, metavar="N", help="explorer sequences per run (default: 300)"
    )
    bench.add_argument(
        "--cases", metavar="PATTERN", help="time only these catalogue cases (chainsuite run -k)"
    )
    bench.add_argument(
        "--only",
        metavar="FIGURE,...",
        help="measure only these figures: probe, build, simulator, explorer, catalogue",
    )
    bench.add_argument(
        "--dir", metavar="DIR", help="scratch directory (default: /dev/shm when there is one)"
    )
    bench.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    mutants = commands.add_parser(
        "mutants",
        help="run the catalogue against mutants of the reference and print the kill score",
        description="Run the catalogue against each mutant of the reference (a libvirt bug "
        "brought back, or an obvious wrong turn), judged by the expectations of each profile "
        "the mutant applies to, and print a table: mutant, profile, killed or survived, the "
        "first case that killed it; then the kill percentage. Only cases the unmutated "
        "reference passes can kill. Exit status: 0 when every mutant was killed, 1 if one "
        "survived, 2 for a usage error.",
    )
    mutants.add_argument(
        "--profile",
        action="append",
        choices=PROFILE_NAMES,
        help="only the runs under this profile (repeatable; default: every mutant's profiles)",
    )
    mutants.add_argument(
        "--mutant", "-m", action="append", metavar="ID", help="only this mutant (repeatable)"
    )
    mutants.add_argument("--list", action="store_true", help="list the mutants and stop")
    mutants.add_argument("--json", metavar="FILE", help="write the table as JSON")
    mutants.add_argument(
        "--every-case",
        action="store_true",
        help="run every case against each mutant and name all that kill it (slower)",
    )
    mutants.add_argument(
        "--explore",
        type=int,
        default=0,
        metavar="N",
        help="explore up to N sequences against reference:PROFILE for each survivor",
    )
    mutants.add_argument(
        "--seed", type=int, default=0, metavar="S", help="exploration seed (default: %(default)s)"
    )
    mutants.add_argument(
        "--found", metavar="DIR", help="write what exploration finds there as case files"
    )
    mutants.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):
        # Output piped into head and the like ends quietly, as for any Unix tool.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = _parser().parse_args(argv)
    if args.command == "probe":
        from conformance.probe_command import run_probe

        return run_probe(args.path, args.format, args.profile, args.output)
    if args.command == "explain":
        from conformance.explain import run_explain

        return run_explain(args.edge_case, args.profiles, args.output)
    if args.command == "corpus":
        from conformance.corpus_command import run_corpus

        return run_corpus(args)
    if args.command == "study":
        from conformance.study_command import run_study_command

        return run_study_command(args)
    if args.command == "bench":
        from conformance.bench_command import run_bench_command

        return run_bench_command(args)
    if args.command == "mutants":
        from conformance.mutants_command import run_mutants

        return run_mutants(args)
    if args.command in ("explore", "replay"):
        from conformance import explore_command

        if args.command == "explore":
            return explore_command.run_explore(args)
        return explore_command.run_replay(args)
    from conformance import run_command

    handlers = {
        "smoke": run_command.smoke_check,
        "run": run_command.run_suite,
        "impls": run_command.list_impls,
        "cases": run_command.list_cases,
        "compare": run_command.compare_reports,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
