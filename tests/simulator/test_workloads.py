"""The standard workloads run through under every cache policy, refusing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.profiles import PROFILES
from simulator.workloads import STANDARD, run

LIFECYCLE_PROFILES = ("seed-v2", "libvirt-1.0", "libvirt-modern")


@pytest.mark.parametrize("profile", LIFECYCLE_PROFILES)
@pytest.mark.parametrize("workload", STANDARD, ids=[workload.name for workload in STANDARD])
def test_workload_runs_every_operation(workload, profile, tmp_path: Path) -> None:
    result = run(workload, PROFILES[profile], str(tmp_path))
    assert result.failed_operations == 0
    assert result.operations == len(workload.steps)


def test_modelled_chain_probes_once_per_start_and_never_an_open_file(tmp_path: Path) -> None:
    for index, workload in enumerate(STANDARD):
        directory = tmp_path / str(index)
        directory.mkdir()
        counters = run(workload, PROFILES["libvirt-modern"], str(directory)).counters
        starts = sum(1 for label, _ in workload.steps if label.startswith("start"))
        assert counters.probes == starts
        assert counters.probes_of_open_files == 0
