"""Realistic operation mixes run on the simulated hypervisor, to count what caching costs.

A workload builds its images in a directory, then drives one domain through a
lifetime (start, snapshots, block jobs, restarts, stop). Running the same
workload under different profiles compares their cache rules on equal terms:
probes, header bytes read, probes of files qemu held open for writing, and
operations that read a stale cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from simulator.formats.qcow2 import Qcow2Image, encode
from simulator.hypervisor import Counters, DiskConfig, Hypervisor, Outcome
from simulator.model import Chain
from simulator.profiles import Profile

SIZE = 1 << 20
Step = Callable[[Hypervisor, str], Outcome]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    depth: int
    """Layers of the disk's chain at start."""
    steps: tuple[tuple[str, Step], ...]


@dataclass(frozen=True)
class WorkloadResult:
    workload: str
    profile: str
    operations: int
    failed_operations: int
    counters: Counters

    def to_json(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "profile": self.profile,
            "operations": self.operations,
            "failed-operations": self.failed_operations,
            **{key.replace("_", "-"): value for key, value in asdict(self.counters).items()},
        }


def make_chain(directory: str, depth: int) -> str:
    """``depth`` qcow2 layers with absolute names; returns the top's path."""
    names = [os.path.join(directory, f"layer-{index:03d}.qcow2") for index in range(depth)]
    for index, name in enumerate(names):
        below = names[index + 1].encode() if index + 1 < depth else None
        image = Qcow2Image(SIZE, below, "qcow2" if below else None, version=2)
        with open(name, "wb") as file:
            file.write(encode(image))
    return names[0]


def run(workload: Workload, profile: Profile, directory: str) -> WorkloadResult:
    """Runs ``workload`` in ``directory`` (which it fills) under ``profile``."""
    top = make_chain(directory, workload.depth)
    hypervisor = Hypervisor(profile, track_staleness=True)
    hypervisor.define("vm", [DiskConfig("vda", top, "qcow2")])
    failed = 0
    for _label, step in workload.steps:
        if not step(hypervisor, directory).ok:
            failed += 1
    return WorkloadResult(
        workload.name, profile.name, len(workload.steps), failed, hypervisor.counters
    )


def _start(hv: Hypervisor, _d: str) -> Outcome:
    return hv.start("vm")


def _stop(hv: Hypervisor, _d: str) -> Outcome:
    return hv.destroy("vm")


def _restart(hv: Hypervisor, _d: str) -> Outcome:
    return hv.daemon_restart()


def _snapshot(number: int) -> Step:
    def step(hv: Hypervisor, directory: str) -> Outcome:
        return hv.snapshot("vm", "vda", os.path.join(directory, f"snap-{number:03d}.qcow2"))

    return step


def _finish_job(hv: Hypervisor) -> Outcome:
    outcome = hv.job_step("vm", "vda")
    if outcome.ok:
        hv.deliver_all()
        job = hv.domains["vm"].live_disk("vda")
        if job is not None and job.job is not None:
            return hv.block_job_pivot("vm", "vda")
    return outcome


def _pull(hv: Hypervisor, _d: str) -> Outcome:
    outcome = hv.block_pull("vm", "vda")
    return _finish_job(hv) if outcome.ok else outcome


def _commit_below_top(hv: Hypervisor, _d: str) -> Outcome:
    """Commit the layer under the active one into the layer below it (an intermediate commit).

    The layers are named by path, as a user who knows their files names them; when nothing
    is cached (a 2012 daemon after a snapshot or restart) the names come from the files,
    uncounted, and the commit itself probes as libvirt would.
    """
    chain = hv.chain("vm", "vda")
    if chain is None:
        domain = hv.domains["vm"]
        disk = domain.live_disk("vda")
        truth = hv.fresh_chain(disk.config) if disk is not None else None
        chain = truth if isinstance(truth, Chain) else None
    if chain is None or len(chain) < 2:
        return hv.block_commit("vm", "vda", top="vda[1]")
    base = chain.layers[2].filename if len(chain) >= 3 else None
    outcome = hv.block_commit("vm", "vda", top=chain.layers[1].filename, base=base)
    return _finish_job(hv) if outcome.ok else outcome


def _attach_cdrom(number: int) -> Step:
    def step(hv: Hypervisor, directory: str) -> Outcome:
        path = os.path.join(directory, f"media-{number}.raw")
        with open(path, "wb") as file:
            file.truncate(SIZE)
        return hv.attach(
            "vm", DiskConfig(f"sd{chr(ord('a') + number)}", path, "raw", device="cdrom")
        )

    return step


def vm_lifetime(depth: int = 3, snapshots: int = 6) -> Workload:
    """A VM's life: snapshots every so often, commits and pulls, a restart, a hotplug."""
    steps: list[tuple[str, Step]] = [("start", _start)]
    for number in range(snapshots):
        steps.append((f"snapshot {number}", _snapshot(number)))
        if number % 2 == 1:
            steps.append(("commit below the top", _commit_below_top))
        if number == snapshots // 2:
            steps.append(("daemon restart", _restart))
            steps.append(("attach a cdrom", _attach_cdrom(0)))
    steps += [("pull", _pull), ("stop", _stop), ("start again", _start), ("stop", _stop)]
    return Workload(
        f"lifetime-{depth}",
        f"{depth}-layer disk: {snapshots} snapshots, commits, a restart, a pull",
        depth,
        tuple(steps),
    )


def _cycles(
    name: str, description: str, depth: int, count: int, cycle: Sequence[tuple[str, Step]]
) -> Workload:
    """Start, ``count`` repetitions of ``cycle`` (snapshots numbered per cycle), stop."""
    steps: list[tuple[str, Step]] = [("start", _start)]
    for number in range(count):
        for label, step in cycle:
            steps.append((label, _snapshot(number) if step is _snapshot_placeholder else step))
    steps.append(("stop", _stop))
    return Workload(name, description, depth, tuple(steps))


def _snapshot_placeholder(hv: Hypervisor, directory: str) -> Outcome:
    """Stands in a cycle for the cycle's own numbered snapshot."""
    raise AssertionError("replaced by _cycles")


SNAPSHOT = ("snapshot", _snapshot_placeholder)
COMMIT = ("commit below the top", _commit_below_top)
RESTART = ("daemon restart", _restart)


def snapshot_storm(depth: int = 2, snapshots: int = 20) -> Workload:
    """Backups by snapshot: many snapshots, each followed by a commit back (a backup cycle)."""
    description = f"{depth}-layer disk: {snapshots} snapshot-and-commit cycles"
    return _cycles(f"snapshot-storm-{depth}", description, depth, snapshots, [SNAPSHOT, COMMIT])


def restarts(depth: int = 50, count: int = 10) -> Workload:
    """A long chain and a daemon restarted often while jobs run."""
    description = f"{depth}-layer disk: {count} cycles of snapshot, daemon restart, commit"
    cycle = [SNAPSHOT, RESTART, COMMIT]
    return _cycles(f"restarts-{depth}", description, depth, count, cycle)


def jobs_after_restart(depth: int = 20, count: int = 10) -> Workload:
    """Restarts between block jobs with no snapshot in between: where a kept chain pays."""
    description = f"{depth}-layer disk: {count} cycles of daemon restart then commit"
    return _cycles(f"jobs-after-restart-{depth}", description, depth, count, [RESTART, COMMIT])


STANDARD = (vm_lifetime(), snapshot_storm(), restarts(), jobs_after_restart())
