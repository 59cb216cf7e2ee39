"""Realistic operation mixes run on the simulated hypervisor, to count what caching costs.

A workload builds its images in a directory, then drives one domain through a
lifetime (start, snapshots, block jobs, restarts, stop). Running the same
workload under different profiles compares their cache rules on equal terms:
probes, header bytes read, probes of files qemu held open for writing, and
operations that read a stale cache.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum

from simulator.formats.qcow2 import Qcow2Image, encode_parts
from simulator.hypervisor import Counters, DiskConfig, FaultyStorage, Hypervisor, Outcome
from simulator.model import Chain
from simulator.profiles import Profile
from simulator.storage import LocalStorage, Storage

SIZE = 1 << 20
Step = Callable[[Hypervisor, str], Outcome]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    depth: int
    """Layers of the disk's chain at start."""
    steps: tuple[tuple[str, Step], ...]


@dataclass
class OperationCost:
    """What the steps with one label cost together during a run."""

    count: int = 0
    failed: int = 0
    counters: Counters = field(default_factory=Counters)
    prober_seconds: float = 0.0


@dataclass(frozen=True)
class WorkloadResult:
    workload: str
    profile: str
    operations: int
    failed_operations: int
    counters: Counters
    prober_seconds: float = 0.0
    """Time spent in counted probes: measured, so it varies between runs."""
    by_operation: Mapping[str, OperationCost] = field(default_factory=dict)
    """The costs attributed to each step label, in order of first appearance."""
    seconds: float = 0.0
    """Time inside the simulated operations, the set-up and this runner's bookkeeping
    excluded: measured, so it varies between runs."""

    def to_json(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "profile": self.profile,
            "operations": self.operations,
            "failed-operations": self.failed_operations,
            **{key.replace("_", "-"): value for key, value in asdict(self.counters).items()},
        }


def make_chain(directory: str, depth: int, storage: Storage | None = None) -> str:
    """``depth`` qcow2 layers with absolute names; returns the top's path."""
    storage = storage if storage is not None else LocalStorage()
    names = [os.path.join(directory, f"layer-{index:03d}.qcow2") for index in range(depth)]
    for index, name in enumerate(names):
        below = names[index + 1].encode() if index + 1 < depth else None
        image = Qcow2Image(SIZE, below, "qcow2" if below else None, version=2)
        storage.write(name, encode_parts(image))
    return names[0]


def run(
    workload: Workload,
    profile: Profile,
    directory: str,
    *,
    track_staleness: bool = True,
    storage: Storage | None = None,
) -> WorkloadResult:
    """Runs ``workload`` in ``directory`` (which it fills) under ``profile``.

    ``track_staleness`` is the hypervisor's: without it no stale operation is counted, and
    no chain is probed afresh to find one. ``storage`` holds the files (default: the disk).
    """
    files = FaultyStorage(storage)
    top = make_chain(directory, workload.depth, files)
    hypervisor = Hypervisor(profile, files, track_staleness=track_staleness)
    hypervisor.define("vm", [DiskConfig("vda", top, "qcow2")])
    failed = 0
    by_operation: dict[str, OperationCost] = {}
    simulating = 0.0
    for label, step in workload.steps:
        before, seconds = copy.copy(hypervisor.counters), hypervisor.prober_seconds
        started = time.perf_counter()
        ok = step(hypervisor, directory).ok
        simulating += time.perf_counter() - started
        if not ok:
            failed += 1
        cost = by_operation.setdefault(label, OperationCost())
        cost.count += 1
        cost.failed += 0 if ok else 1
        cost.prober_seconds += hypervisor.prober_seconds - seconds
        _add(cost.counters, hypervisor.counters, before)
    return WorkloadResult(
        workload.name,
        profile.name,
        len(workload.steps),
        failed,
        hypervisor.counters,
        hypervisor.prober_seconds,
        by_operation,
        simulating,
    )


def _add(total: Counters, after: Counters, before: Counters) -> None:
    """Adds to ``total`` what the counters grew by from ``before`` to ``after``."""
    for counter in fields(Counters):
        grown = getattr(after, counter.name) - getattr(before, counter.name)
        setattr(total, counter.name, getattr(total, counter.name) + grown)


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
        hv.storage.write(path, bytes(SIZE))
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


class Operation(StrEnum):
    """The operations of a generated lifetime; each is also the label of its steps."""

    START = "start"
    STOP = "stop"
    SNAPSHOT = "snapshot"
    COMMIT = "commit below the top"
    PULL = "pull"
    ATTACH = "attach a disk"
    DETACH = "detach a disk"
    RESTART = "daemon restart"


@dataclass(frozen=True)
class Mix:
    """The distribution ``generate`` draws VM lifetimes from.

    Each VM's disk starts with a qcow2 chain whose depth is drawn log-uniformly over
    ``min_depth``..``max_depth`` (``floor(exp(U(ln min, ln(max + 1))))``: with 1..200, about
    half the disks have 14 layers or fewer and one in ten more than 120). The VM is booted a
    number of times drawn uniformly from ``boots``; each boot is a start, a number of
    operations drawn uniformly from ``operations_per_boot``, and a stop. Each operation is
    drawn by ``weights``; one that cannot apply is replaced by a snapshot (or, at
    ``max_depth`` layers, by a commit; failing both, by a daemon restart): a commit below
    the top needs 3 layers, a pull 2, a detach a disk attached during this boot, and a
    snapshot fewer than ``max_depth`` layers, so the chain stays within the bounds.
    """

    min_depth: int = 1
    max_depth: int = 200
    boots: tuple[int, int] = (1, 3)
    operations_per_boot: tuple[int, int] = (4, 24)
    weights: tuple[tuple[Operation, int], ...] = (
        (Operation.SNAPSHOT, 35),
        (Operation.COMMIT, 25),
        (Operation.PULL, 5),
        (Operation.ATTACH, 12),
        (Operation.DETACH, 8),
        (Operation.RESTART, 15),
    )

    def __post_init__(self) -> None:
        if not 1 <= self.min_depth <= self.max_depth:
            raise ValueError(f"depths {self.min_depth}..{self.max_depth}: need 1 <= min <= max")
        for name, (low, high) in (("boots", self.boots), ("operations", self.operations_per_boot)):
            if not 0 <= low <= high or (name == "boots" and low < 1):
                raise ValueError(f"{name} {low}..{high} is not a range of counts")
        if not self.weights or any(weight <= 0 for _, weight in self.weights):
            raise ValueError("every weighted operation needs a positive weight")
        drawable = {Operation.START, Operation.STOP}
        if any(operation in drawable for operation, _ in self.weights):
            raise ValueError("starts and stops bound each boot; they are not drawn")

    def draw_depth(self, rng: random.Random) -> int:
        """A starting depth, log-uniform over ``min_depth``..``max_depth``."""
        low, high = math.log(self.min_depth), math.log(self.max_depth + 1)
        return min(self.max_depth, max(self.min_depth, int(math.exp(rng.uniform(low, high)))))

    def to_json(self) -> dict[str, object]:
        total = sum(weight for _, weight in self.weights)
        return {
            "depth": {
                "min": self.min_depth,
                "max": self.max_depth,
                "distribution": "log-uniform: floor(exp(U(ln min, ln(max + 1))))",
            },
            "boots": {"min": self.boots[0], "max": self.boots[1], "distribution": "uniform"},
            "operations-per-boot": {
                "min": self.operations_per_boot[0],
                "max": self.operations_per_boot[1],
                "distribution": "uniform",
            },
            "operation-weights": {operation.value: weight for operation, weight in self.weights},
            "operation-shares": {
                operation.value: round(weight / total, 4) for operation, weight in self.weights
            },
        }


MIX = Mix()
"""The study's default distribution."""


def generate(seed: int, count: int, mix: Mix = MIX) -> tuple[Workload, ...]:
    """``count`` VM lifetimes drawn from ``mix``; the same seed gives the same workloads."""
    rng = random.Random(seed)
    width = len(str(count))
    return tuple(_lifetime(rng, f"vm-{number + 1:0{width}d}", mix) for number in range(count))


def _lifetime(rng: random.Random, name: str, mix: Mix) -> Workload:
    depth = mix.draw_depth(rng)
    operations = [operation for operation, _ in mix.weights]
    weights = [weight for _, weight in mix.weights]
    layers = depth
    done = dict.fromkeys(Operation, 0)
    attaches = 0
    steps: list[tuple[str, Step]] = []
    boots = rng.randint(*mix.boots)
    for _boot in range(boots):
        steps.append((Operation.START.value, _start))
        attached: list[int] = []
        for _ in range(rng.randint(*mix.operations_per_boot)):
            operation = _applicable(rng.choices(operations, weights)[0], layers, attached, mix)
            done[operation] += 1
            step: Step
            if operation is Operation.SNAPSHOT:
                step, layers = _snapshot(done[operation] - 1), layers + 1
            elif operation is Operation.COMMIT:
                step, layers = _commit_below_top, layers - 1
            elif operation is Operation.PULL:
                step, layers = _pull, 1
            elif operation is Operation.ATTACH:
                step = _attach_data_disk(attaches)
                attached.append(attaches)
                attaches += 1
            elif operation is Operation.DETACH:
                step = _detach_data_disk(attached.pop(rng.randrange(len(attached))))
            else:
                step = _restart
            steps.append((operation.value, step))
        steps.append((Operation.STOP.value, _stop))
    counts = ", ".join(
        _count(done[operation], noun) for operation, noun in _NOUNS if done[operation]
    )
    description = f"{depth}-layer disk, {_count(boots, 'boot')}: {counts or 'idle'}"
    return Workload(name, description, depth, tuple(steps))


_NOUNS = (
    (Operation.SNAPSHOT, "snapshot"),
    (Operation.COMMIT, "commit"),
    (Operation.PULL, "pull"),
    (Operation.ATTACH, "attach"),
    (Operation.DETACH, "detach"),
    (Operation.RESTART, "daemon restart"),
)


def _count(number: int, noun: str) -> str:
    if number == 1:
        return f"1 {noun}"
    return f"{number} {noun}{'es' if noun.endswith('ch') else 's'}"


def _applicable(operation: Operation, layers: int, attached: list[int], mix: Mix) -> Operation:
    """``operation`` if it can apply to the chain as the workload left it, else a substitute."""
    possible = {
        Operation.SNAPSHOT: layers < mix.max_depth,
        Operation.COMMIT: layers >= 3,
        Operation.PULL: layers >= 2,
        Operation.DETACH: bool(attached),
    }
    if possible.get(operation, True):
        return operation
    for substitute in (Operation.SNAPSHOT, Operation.COMMIT):
        if possible[substitute]:
            return substitute
    return Operation.RESTART


def _data_disk_target(number: int) -> str:
    """vdb, vdc, ... vdz, vdaa, ...: libvirt's names for the disks after vda."""
    letters = ""
    number += 2
    while number:
        number, remainder = divmod(number - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return f"vd{letters}"


def _attach_data_disk(number: int) -> Step:
    """Hotplug a new one-layer qcow2 data disk."""

    def step(hv: Hypervisor, directory: str) -> Outcome:
        path = os.path.join(directory, f"data-{number:03d}.qcow2")
        hv.storage.write(path, encode_parts(Qcow2Image(SIZE, None, None, version=2)))
        return hv.attach("vm", DiskConfig(_data_disk_target(number), path, "qcow2"))

    return step


def _detach_data_disk(number: int) -> Step:
    def step(hv: Hypervisor, _d: str) -> Outcome:
        return hv.detach("vm", _data_disk_target(number))

    return step
