"""Build speed: the native writer against a ``qemu-img create -u`` loop, measured in one run.

Builds the same qcow2 chain (default 1000 layers, each naming the next relatively with
its format recorded, explicit size) twice: with ``images.build.build(...,
BuildMethod.NATIVE)``, and with one ``qemu-img create -q -f qcow2 -b NEXT -F qcow2 -u
LAYER SIZE`` per layer, base first. Prints both times (the native one the median of
several runs), their ratio, and whether the two chains read alike through ``qemu-img
info --backing-chain``. Nothing here is asserted; ``chainsuite bench`` measures the same
with every other figure.

    python benchmarks/build_bench.py [--layers N] [--runs N] [--dir DIRECTORY]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from conformance.bench import chain_reading, time_native, time_qemu_img_loop
from images.spec import deep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5, help="native runs (median)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where to build (default: /dev/shm, a tmpfs, so that both builders are measured "
        "rather than the disk's journal; pass a directory on disk to include the disk)",
    )
    args = parser.parse_args()
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        print("qemu-img is missing: apt-get install qemu-utils", file=sys.stderr)
        return 1
    spec = deep("build-bench", args.layers)
    with tempfile.TemporaryDirectory(prefix="chainsuite-build-bench-", dir=args.dir) as scratch:
        root = Path(scratch)
        native_times = [time_native(spec, root / f"native-{run}") for run in range(args.runs)]
        native_seconds = statistics.median(native_times)
        qemu_seconds = time_qemu_img_loop(qemu_img, spec, root / "qemu-img")
        alike = chain_reading(qemu_img, root / "native-0" / spec.top) == chain_reading(
            qemu_img, root / "qemu-img" / spec.top
        )
    print(f"{args.layers}-layer qcow2 chain, built in {root.parent}")
    print(f"native writer     {native_seconds:8.3f} s  (median of {args.runs})")
    print(f"qemu-img create -u{qemu_seconds:8.3f} s  (one process per layer)")
    print(f"ratio             {qemu_seconds / native_seconds:8.1f} x")
    print(f"chains read alike {'yes' if alike else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
