"""The cache-policy study: what keeping a disk's chain saves, on generated VM lifetimes.

The 2012 review of the cache patch asked: "Is it used so much that either level
of caching would actually be a substantial gain?" The study answers with counts.
It draws VM lifetimes from a seeded distribution (``simulator.workloads.generate``),
runs each one on the simulated hypervisor under every cache policy, on real
image files in a temporary directory, and totals per policy and per operation
what each cost: probes, header bytes read, probes of files qemu held open for
writing, operations that read a stale chain, refused operations, and the time
spent in the prober. Every number but the time is a function of the seed and
the number of VMs; the time is measured.

This module computes and renders (Markdown, JSON, PNG); ``study_command`` is the
command-line glue that writes the files.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from simulator.hypervisor import Counters
from simulator.profiles import PROFILES, Profile
from simulator.workloads import MIX, Mix, Operation, Workload, WorkloadResult, generate, run

BASELINE = "no-cache"


@dataclass(frozen=True)
class Policy:
    """A cache policy: a named profile, or a variant of one that changes one cache rule."""

    key: str
    label: str
    profile: Profile


def policies() -> tuple[Policy, ...]:
    """The study's policies, the no-cache baseline first."""
    landed = PROFILES["libvirt-1.0"]
    no_cache = replace(landed.cache, reuses_cache=False)
    kept = replace(landed.cache, survives_restart=True)
    return (
        Policy(
            BASELINE,
            "no cache (1.0 rules, every caller probes)",
            replace(landed, name="libvirt-1.0/no-cache", cache=no_cache),
        ),
        Policy("seed-v2", "seed-v2 (live-only cache, as posted)", PROFILES["seed-v2"]),
        Policy("libvirt-1.0", "libvirt-1.0 (live-only cache, as landed)", landed),
        Policy(
            "kept-in-status",
            "1.0 + chain kept in status across restarts",
            replace(landed, name="libvirt-1.0/kept-in-status", cache=kept),
        ),
        Policy(
            "libvirt-modern",
            "libvirt-modern (chain modelled, not re-probed)",
            PROFILES["libvirt-modern"],
        ),
    )


@dataclass
class Totals:
    """What a set of operations cost under one policy."""

    operations: int = 0
    refused: int = 0
    probes: int = 0
    header_bytes_read: int = 0
    probes_of_open_files: int = 0
    stale_operations: int = 0
    prober_seconds: float = 0.0

    def add(self, operations: int, refused: int, counters: Counters, seconds: float) -> None:
        self.operations += operations
        self.refused += refused
        self.probes += counters.probes
        self.header_bytes_read += counters.header_bytes_read
        self.probes_of_open_files += counters.probes_of_open_files
        self.stale_operations += counters.stale_operations
        self.prober_seconds += seconds

    def counts(self) -> dict[str, int]:
        """Every number but the measured time: what the seed determines."""
        return {
            "operations": self.operations,
            "refused": self.refused,
            "probes": self.probes,
            "header-bytes-read": self.header_bytes_read,
            "probes-of-open-files": self.probes_of_open_files,
            "stale-operations": self.stale_operations,
        }

    def to_json(self) -> dict[str, object]:
        return {**self.counts(), "prober-seconds": round(self.prober_seconds, 6)}


@dataclass
class PolicyResult:
    policy: Policy
    total: Totals = field(default_factory=Totals)
    by_operation: dict[str, Totals] = field(default_factory=dict)
    by_vm: list[Totals] = field(default_factory=list)

    def add(self, result: WorkloadResult) -> None:
        vm = Totals()
        vm.add(result.operations, result.failed_operations, result.counters, result.prober_seconds)
        self.by_vm.append(vm)
        self.total.add(
            result.operations, result.failed_operations, result.counters, result.prober_seconds
        )
        for label, cost in result.by_operation.items():
            totals = self.by_operation.setdefault(label, Totals())
            totals.add(cost.count, cost.failed, cost.counters, cost.prober_seconds)

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.policy.key,
            "label": self.policy.label,
            "profile": self.policy.profile.name,
            "total": self.total.to_json(),
            "by-operation": {
                label: totals.to_json() for label, totals in _in_order(self.by_operation)
            },
        }


@dataclass
class StudyResult:
    seed: int
    mix: Mix
    workloads: tuple[Workload, ...]
    results: tuple[PolicyResult, ...]
    seconds: float = 0.0

    def policy(self, key: str) -> PolicyResult:
        for result in self.results:
            if result.policy.key == key:
                return result
        raise KeyError(key)

    @property
    def baseline(self) -> PolicyResult:
        return self.policy(BASELINE)

    def to_json(self) -> dict[str, object]:
        return {
            "command": reproduce_command(self.seed, len(self.workloads)),
            "seed": self.seed,
            "vms": len(self.workloads),
            "workload-parameters": self.mix.to_json(),
            "baseline": BASELINE,
            "note": "prober-seconds is measured and varies between runs; every other number "
            "is a function of the seed and the number of VMs",
            "policies": [result.to_json() for result in self.results],
            "workloads": [
                {
                    "name": workload.name,
                    "description": workload.description,
                    "depth": workload.depth,
                    "steps": [label for label, _ in workload.steps],
                    "by-policy": {
                        result.policy.key: result.by_vm[index].to_json() for result in self.results
                    },
                }
                for index, workload in enumerate(self.workloads)
            ],
        }


def reproduce_command(seed: int, vms: int) -> str:
    return f"chainsuite study --seed {seed} --vms {vms}"


def run_study(
    seed: int,
    vms: int,
    mix: Mix = MIX,
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Generates ``vms`` lifetimes from ``seed`` and runs each under every policy."""
    started = time.perf_counter()
    workloads = generate(seed, vms, mix)
    results = tuple(PolicyResult(policy) for policy in policies())
    for number, workload in enumerate(workloads, start=1):
        for result in results:
            with tempfile.TemporaryDirectory(prefix="chainsuite-study-") as directory:
                result.add(run(workload, result.policy.profile, directory))
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(
                f"[{number}/{len(workloads)}] {workload.name}: {workload.description} "
                f"({len(workload.steps)} operations; {elapsed:.1f} s)"
            )
    return StudyResult(seed, mix, workloads, results, time.perf_counter() - started)


# -- Markdown -----------------------------------------------------------------------------

_ORDER = [operation.value for operation in Operation]


def _in_order(by_operation: dict[str, Totals]) -> list[tuple[str, Totals]]:
    def rank(label: str) -> tuple[int, str]:
        return (_ORDER.index(label) if label in _ORDER else len(_ORDER), label)

    return [(label, by_operation[label]) for label in sorted(by_operation, key=rank)]


def _ratio(value: float, baseline: float) -> str:
    if baseline == 0:
        return "-" if value == 0 else "new"
    return f"{value / baseline:.2f}x"


def _row(name: str, totals: Totals, base: Totals) -> str:
    cells = [
        name,
        f"{totals.operations}",
        f"{totals.probes}",
        _ratio(totals.probes, base.probes),
        f"{totals.header_bytes_read:,}",
        _ratio(totals.header_bytes_read, base.header_bytes_read),
        f"{totals.probes_of_open_files}",
        _ratio(totals.probes_of_open_files, base.probes_of_open_files),
        f"{totals.stale_operations}",
        f"{totals.prober_seconds * 1000:.1f}",
        _ratio(totals.prober_seconds, base.prober_seconds),
        f"{totals.refused}",
    ]
    return "| " + " | ".join(cells) + " |"


_HEADER = (
    "| {first} | ops | probes | x no cache | header bytes | x no cache | probes of open files "
    "| x no cache | stale ops | prober ms | x no cache | refused |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def render_markdown(result: StudyResult) -> str:
    base = result.baseline
    workloads = result.workloads
    depths = [workload.depth for workload in workloads]
    operations = base.total.operations
    mix = result.mix
    total_weight = sum(weight for _, weight in mix.weights)
    shares = ", ".join(
        f"{operation.value} {100 * weight / total_weight:.0f}%" for operation, weight in mix.weights
    )
    lines = [
        "# Cache-policy study",
        "",
        f"Reproduce with `{reproduce_command(result.seed, len(workloads))}`. Every count is a "
        "function of the seed and the number of VMs; the time in the prober is measured "
        "(perf_counter around each counted probe) and varies between runs.",
        "",
        "## Workloads",
        "",
        f"{len(workloads)} VM lifetimes, {operations} operations in all, drawn with seed "
        f"{result.seed}. Starting chain depth: log-uniform over {mix.min_depth}-{mix.max_depth} "
        f"layers (here min {min(depths)}, median {statistics.median(depths):g}, "
        f"max {max(depths)}). Boots per VM: {mix.boots[0]}-{mix.boots[1]}, each a start, "
        f"{mix.operations_per_boot[0]}-{mix.operations_per_boot[1]} operations and a stop. "
        f"Operations drawn as: {shares}; one that cannot apply (a commit below the top needs "
        "3 layers, a pull 2, a detach an attached disk) becomes a snapshot. Each VM runs on "
        "its own simulated host, on real qcow2 files, once per policy.",
        "",
        "Operations performed: "
        + ", ".join(
            f"{label} {totals.operations}" for label, totals in _in_order(base.by_operation)
        )
        + ".",
        "",
        "## Summary",
        "",
        summary(result),
        "",
        "Ratios are against the no-cache baseline on the same workloads; '-' where the "
        "baseline and the policy both count 0. A probe of an open file is one image read "
        "while the simulated qemu held it open for writing; a stale operation read a cached "
        "chain that no longer matched the files; refused operations failed under that policy.",
    ]
    for policy in result.results:
        lines += ["", f"## {policy.policy.label}", "", _HEADER.format(first="operation")]
        for label, totals in _in_order(policy.by_operation):
            lines.append(_row(label, totals, base.by_operation.get(label, Totals())))
        lines.append(_row("**total**", policy.total, base.total))
    return "\n".join(lines) + "\n"


def summary(result: StudyResult) -> str:
    """The totals per policy as a Markdown table."""
    base = result.baseline.total
    rows = [_row(policy.policy.label, policy.total, base) for policy in result.results]
    return "\n".join([_HEADER.format(first="policy"), *rows])


def render_json(result: StudyResult) -> str:
    return json.dumps(result.to_json(), indent=2) + "\n"


# -- PNG ----------------------------------------------------------------------------------

_PLOTTED = (
    ("probes", "probes"),
    ("header_bytes_read", "header KiB read"),
    ("probes_of_open_files", "probes of files open for writing"),
    ("stale_operations", "operations on a stale chain"),
    ("prober_seconds", "time in the prober (ms)"),
)


def render_png(result: StudyResult) -> bytes | None:
    """Bar charts of the totals per policy; None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(18, 4.8), layout="constrained")
    axes = figure.subplots(1, len(_PLOTTED))
    keys = [policy.policy.key for policy in result.results]
    for axis, (attribute, title) in zip(axes, _PLOTTED, strict=True):
        values = [float(getattr(policy.total, attribute)) for policy in result.results]
        if attribute == "header_bytes_read":
            values = [value / 1024 for value in values]
        elif attribute == "prober_seconds":
            values = [value * 1000 for value in values]
        bars = axis.bar(keys, values, color=[f"C{index}" for index in range(len(keys))])
        axis.bar_label(bars, labels=[f"{value:,.0f}" for value in values], fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=35, labelsize=8)
        axis.margins(y=0.15)
    figure.suptitle(
        f"Cache policies on {len(result.workloads)} generated VM lifetimes "
        f"({reproduce_command(result.seed, len(result.workloads))})",
        fontsize=11,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
