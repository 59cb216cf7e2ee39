"""How fast the differential explorer runs against the reference: sequences per second.

Each figure is measured in this run. The explorer runs the reference against itself
(``libvirt-modern`` on both sides: they never part, so every example is a whole sequence)
with a fixed seed; each sequence is run on both sides, from freshly placed images, with the
cached chains compared after every step. The baseline is the plain catalogue runner on the
same adapter: as many lifecycle cases as the explorer ran sequences, cycling through the
catalogue, one side only. The target of the explorer is 100 sequences a second.

    python benchmarks/explore_bench.py [--sequences N] [--seed S]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from conformance.bench import EXPLORER_TARGET as TARGET_PER_SECOND
from conformance.bench import explorer_rate, runner_rate
from conformance.explore import explorer_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=1000, metavar="N")
    parser.add_argument("--seed", type=int, default=1, metavar="S")
    args = parser.parse_args()
    explorer_images()  # built once per process; not part of any figure
    explore_per_second, ran = explorer_rate(args.sequences, args.seed)
    disk_per_second, _ = explorer_rate(
        max(args.sequences // 5, 1), args.seed, Path(tempfile.gettempdir())
    )
    baseline = runner_rate(ran)
    verdict = "meets" if explore_per_second >= TARGET_PER_SECOND else "is BELOW"
    print(f"explorer, reference vs reference:  {explore_per_second:8.1f} sequences/s ({ran} run)")
    print(
        f"  the same in {tempfile.gettempdir()} (as for out-of-process sides): "
        f"{disk_per_second:.1f} sequences/s"
    )
    print(f"catalogue runner, lifecycle cases:  {baseline:8.1f} cases/s (one side only)")
    print(f"explorer / runner:                  {explore_per_second / baseline:8.2f}")
    print(
        f"target {TARGET_PER_SECOND:.0f} sequences/s: the explorer {verdict} it "
        f"({explore_per_second / TARGET_PER_SECOND:.2f}x)"
    )


if __name__ == "__main__":
    main()
