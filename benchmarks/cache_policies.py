"""What each cache policy costs on the standard workloads: counts, not timings.

For each workload of ``simulator.workloads.STANDARD`` and each policy, prints
probes, header bytes read, probes of files qemu held open for writing, and
operations that read a stale chain, as a Markdown table. The policies are the
named profiles plus two variants of libvirt 1.0's rules: no cache at all, and
the cache kept in the status XML across daemon restarts (the review's "level 1"),
as ``chainsuite study`` defines them; the study runs them on generated lifetimes.

    python benchmarks/cache_policies.py
"""

from __future__ import annotations

import tempfile

from conformance.study import policies as study_policies
from simulator.profiles import Profile
from simulator.workloads import STANDARD, run


def policies() -> dict[str, Profile]:
    """The policies of ``chainsuite study`` (conformance/study.py), by label."""
    return {policy.label: policy.profile for policy in study_policies()}


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
