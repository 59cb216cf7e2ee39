"""What each cache policy costs on the standard workloads: counts, not timings.

For each workload of ``simulator.workloads.STANDARD`` and each policy, prints
probes, header bytes read, probes of files qemu held open for writing, and
operations that read a stale chain, as a Markdown table. The policies are the
named profiles plus two variants of libvirt 1.0's rules: no cache at all, and
the cache kept in the status XML across daemon restarts (the review's "level 1").

    python benchmarks/cache_policies.py
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

from simulator.profiles import PROFILES, Profile
from simulator.workloads import STANDARD, run


def policies() -> dict[str, Profile]:
    landed = PROFILES["libvirt-1.0"]
    return {
        "no cache (1.0 rules, every caller probes)": replace(
            landed, cache=replace(landed.cache, reuses_cache=False)
        ),
        "seed-v2 (live-only cache, as posted)": PROFILES["seed-v2"],
        "libvirt-1.0 (live-only cache, as landed)": landed,
        "1.0 + chain kept in status across restarts": replace(
            landed, cache=replace(landed.cache, survives_restart=True)
        ),
        "libvirt-modern (chain modelled, not re-probed)": PROFILES["libvirt-modern"],
    }


def main() -> None:
    header = "| policy | probes | header bytes | probes of open files | stale reads | refused |"
    for workload in STANDARD:
        print(f"\n**{workload.name}**: {workload.description}\n")
        print(header)
        print("|---|---:|---:|---:|---:|---:|")
        for name, profile in policies().items():
            with tempfile.TemporaryDirectory() as directory:
                result = run(workload, profile, directory)
            counters = result.counters
            print(
                f"| {name} | {counters.probes} | {counters.header_bytes_read} | "
                f"{counters.probes_of_open_files} | {counters.stale_operations} | "
                f"{result.failed_operations} |"
            )


if __name__ == "__main__":
    main()
