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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):
        # Output piped into head and the like ends quietly, as for any Unix tool.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = _parser().parse_args(argv)
    if args.command == "probe":
        from conformance.probe_command import run_probe

        return run_probe(args.path, args.format, args.profile, args.output)
    if args.command == "corpus":
        from conformance.corpus_command import run_corpus

        return run_corpus(args)
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
