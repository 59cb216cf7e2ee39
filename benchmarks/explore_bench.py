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
import itertools
import shutil
import tempfile
import time
from pathlib import Path

from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import load
from conformance.explore import explore, explorer_images
from conformance.runner import Runner

TARGET_PER_SECOND = 100.0


def explorer_rate(sequences: int, seed: int, workdir: Path | None = None) -> tuple[float, int]:
    """Sequences per second of one exploration, Hypothesis' start-up included."""
    result = explore(
        ReferenceAdapter("libvirt-modern"),
        ReferenceAdapter("libvirt-modern"),
        max_examples=sequences,
        seed=seed,
        out_dir=None,
        workdir=workdir,
    )
    assert result.finding is None, "one profile against itself must agree"
    return result.per_second, result.sequences


def runner_rate(cases_to_run: int) -> float:
    """Lifecycle cases per second through the catalogue runner (images from its cache)."""
    lifecycle = [case for case in load().cases if case.kind == "lifecycle"]
    cache = Path(tempfile.mkdtemp(prefix="chainsuite-bench-cache-"))
    try:
        runner = Runner(ReferenceAdapter("libvirt-modern"), "libvirt-modern", cache_root=cache)
        runnable = [case for case in lifecycle if not runner.missing_capabilities(case)]
        for case in runnable:  # builds every image once, outside the measurement
            runner.run(case)
        started = time.perf_counter()
        for case in itertools.islice(itertools.cycle(runnable), cases_to_run):
            runner.run(case)
        return cases_to_run / (time.perf_counter() - started)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


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
