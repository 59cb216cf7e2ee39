"""The ``chainsuite`` command.

Start-up time matters (``chainsuite probe`` is compared with qemu-img as a
whole process), so each subcommand imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "probe":
        from conformance.probe_command import run_probe

        return run_probe(args.path, args.format, args.profile, args.output)
    return 2


if __name__ == "__main__":
    sys.exit(main())
