"""``chainsuite bench``: runs the benchmarks, prints the table, writes the JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance import bench

QUICK_REPEAT = 2


def _layers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def run_bench_command(args: argparse.Namespace) -> int:
    try:
        probe_layers = _layers(args.layers) if args.layers else bench.Settings.probe_layers
    except ValueError:
        print(f"bench: --layers {args.layers}: need comma-separated counts", file=sys.stderr)
        return 2
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else 7)
    build_layers = args.build_layers or (max(probe_layers) if args.layers else 1000)
    sequences = args.sequences or (20 if args.quick else bench.Settings.explorer_sequences)
    numbers = {"--layers": min(probe_layers, default=0), "--repeat": repeat}
    numbers |= {"--build-layers": build_layers, "--sequences": sequences}
    for option, number in numbers.items():
        if number < 1:
            print(f"bench: {option}: need at least 1", file=sys.stderr)
            return 2
    figures = frozenset(bench.FIGURES)
    if args.only:
        figures = frozenset(name.strip() for name in args.only.split(",") if name.strip())
        unknown = sorted(figures - set(bench.FIGURES))
        if unknown or not figures:
            known = ", ".join(bench.FIGURES)
            print(f"bench: --only {args.only}: figures are {known}", file=sys.stderr)
            return 2
    scratch = Path(args.dir) if args.dir else bench.Settings.default_scratch()
    if scratch is not None and not scratch.is_dir():
        print(f"bench: --dir {scratch}: not a directory", file=sys.stderr)
        return 2
    settings = bench.Settings(
        probe_layers=probe_layers,
        build_layers=build_layers,
        repeat=repeat,
        explorer_sequences=sequences,
        quick=args.quick,
        cases=args.cases,
        scratch=scratch,
        figures=figures,
    )

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    try:
        result = bench.run_bench(settings, progress)
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written", file=sys.stderr)
        return 130
    print(bench.render_table(result))
    if args.json:
        try:
            Path(args.json).write_text(bench.render_json(result))
        except OSError as error:
            print(f"bench: cannot write {args.json}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
