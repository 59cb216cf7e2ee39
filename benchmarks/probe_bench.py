"""Probe speed against qemu-img, measured in one run on this machine.

Builds a qcow2 chain (default 1000 layers, each naming the next relatively,
backing format recorded), then times whole processes, median of several runs:
``qemu-img info --backing-chain --output=json`` against ``chainsuite probe
--profile qemu --output json``. Also prints the header bytes read per layer.
Nothing here is asserted; the figures are printed with their ratio. ``chainsuite bench``
measures the same at 10, 100 and 1000 layers, with every other figure.

    python benchmarks/probe_bench.py [--layers N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conformance.bench import build_chain, median_seconds
from simulator.prober import Prober
from simulator.profiles import get_profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        print("qemu-img is missing: apt-get install qemu-utils", file=sys.stderr)
        return 1
    chainsuite = Path(sys.executable).with_name("chainsuite")
    with tempfile.TemporaryDirectory(prefix="chainsuite-bench-") as scratch:
        directory = Path(scratch)
        top = build_chain(directory, args.layers)
        listed = json.loads(
            subprocess.run(
                [qemu_img, "info", "--backing-chain", "--output=json", top.name],
                cwd=directory,
                check=True,
                capture_output=True,
            ).stdout
        )
        prober = Prober(get_profile("qemu"))
        chain = prober.probe(str(top))
        ours = [str(chainsuite), "probe", "--profile", "qemu", "--output", "json", top.name]
        theirs = [qemu_img, "info", "--backing-chain", "--output=json", top.name]
        subprocess.run(ours, cwd=directory, check=True, stdout=subprocess.DEVNULL)
        qemu_time = median_seconds(theirs, args.runs, directory)
        our_time = median_seconds(ours, args.runs, directory)
        per_layer = prober.stats.header_bytes_read / len(chain)
    runs = f"(median of {args.runs})"
    print(f"chain: {args.layers} qcow2 layers; qemu-img lists {len(listed)}, we list {len(chain)}")
    print(f"qemu-img info --backing-chain -o json : {qemu_time * 1000:8.1f} ms {runs}")
    print(f"chainsuite probe --profile qemu -o json: {our_time * 1000:8.1f} ms {runs}")
    print(f"ratio qemu-img / chainsuite            : {qemu_time / our_time:8.2f}x (target >= 2.5)")
    print(f"header bytes read per layer            : {per_layer:8.0f} B (target <= 4096)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
