"""``chainsuite bench``: each figure measured against its baseline in the same run.

Every row is one measurement: its value, the baseline it is compared with (measured in
the same run on the same machine, when the figure has one), their ratio, the target and
whether it was met. Timings are medians of several runs; what a user runs as a whole
process (``chainsuite probe``, ``qemu-img``, ``chainsuite run``) is timed as one.

The rows:

- ``probe-N``: ``chainsuite probe --profile qemu -o json`` against ``qemu-img info
  --backing-chain --output=json`` on an N-layer qcow2 chain (ratio: how many times faster
  the first is); ``probe-bytes-per-layer``: header bytes the prober read per layer;
- ``build-N``: the native chain writer against a ``qemu-img create -u`` loop;
- ``simulator-ops``: operations per second of the standard workloads on the simulated
  hypervisor, its files in memory (set-up excluded; on disk and with the staleness oracle
  in the details);
- ``explorer``: sequences per second of the explorer, reference against itself, with the
  catalogue runner's lifecycle cases per second as the baseline;
- ``catalogue-reference``, ``catalogue-qemu-img``, ``catalogue-libvirt``: ``chainsuite run``
  as a whole process per adapter.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.formats.qcow2 import Qcow2Image, encode

if TYPE_CHECKING:
    from images.spec import ChainSpec

Progress = Callable[[str], None]

PROBE_TARGET = 2.5
BYTES_PER_LAYER_TARGET = 4096.0
BUILD_TARGET = 50.0
SIMULATOR_TARGET = 20_000.0
EXPLORER_TARGET = 100.0
REFERENCE_CATALOGUE_TARGET = 10.0
LIBVIRT_CATALOGUE_TARGET = 180.0
SIMULATOR_RUN_SECONDS = 0.25
"""Simulated time one run of the simulator row gathers at least: the standard workloads
take a few milliseconds a pass, too short for one pass to be timed on its own."""
FIGURES = ("probe", "build", "simulator", "explorer", "catalogue")
LIBVIRT_EXPECTATIONS = Path(__file__).with_name("expectations") / "libvirt-9.0.json"
SUBPROCESS_TIMEOUT = 600.0
LIBVIRT_TIMEOUT = 1800.0


class Comparison(StrEnum):
    """How a row's target is read."""

    RATIO_AT_LEAST = "ratio>="
    AT_MOST = "value<="
    AT_LEAST = "value>="


@dataclass(frozen=True)
class Target:
    comparison: Comparison
    bound: float

    def met_by(self, value: float, ratio: float | None) -> bool | None:
        if self.comparison is Comparison.RATIO_AT_LEAST:
            return None if ratio is None else ratio >= self.bound
        if self.comparison is Comparison.AT_MOST:
            return value <= self.bound
        return value >= self.bound

    def text(self, unit: str) -> str:
        if self.comparison is Comparison.RATIO_AT_LEAST:
            return f">= {self.bound:g}x"
        sign = "<=" if self.comparison is Comparison.AT_MOST else ">="
        return f"{sign} {_number(self.bound)} {unit}"


@dataclass(frozen=True)
class Row:
    """One figure, its baseline and target; ``skipped`` says why a row has no value."""

    id: str
    figure: str
    unit: str
    value: float | None = None
    baseline: float | None = None
    baseline_label: str | None = None
    ratio: float | None = None
    """baseline / value for times (how many times faster), value / baseline for rates."""
    target: Target | None = None
    runs: int = 0
    skipped: str | None = None
    details: dict[str, object] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.target.met_by(self.value, self.ratio)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "figure": self.figure,
            "unit": self.unit,
            "value": self.value,
            "baseline": self.baseline,
            "baseline-label": self.baseline_label,
            "ratio": self.ratio,
            "target": None
            if self.target is None
            else {
                "comparison": self.target.comparison.value,
                "bound": self.target.bound,
                "text": self.target.text(self.unit),
            },
            "met": self.met,
            "runs": self.runs,
            "skipped": self.skipped,
            "details": self.details,
        }


def timed_row(
    id: str, figure: str, seconds: float, baseline: float, label: str, target: Target | None
) -> Row:
    """A row of times: the ratio says how many times faster ``seconds`` is than the baseline."""
    ratio = baseline / seconds if seconds > 0 else None
    return Row(id, figure, "s", seconds, baseline, label, ratio, target)


@dataclass(frozen=True)
class Settings:
    probe_layers: tuple[int, ...] = (10, 100, 1000)
    build_layers: int = 1000
    repeat: int = 7
    explorer_sequences: int = 300
    quick: bool = False
    cases: str | None = None
    """Only catalogue cases matching this (``chainsuite run -k``); for quick checks."""
    scratch: Path | None = None
    figures: frozenset[str] = frozenset(FIGURES)
    """The figures to measure (``FIGURES``); the others are left out of the table."""

    @classmethod
    def default_scratch(cls) -> Path | None:
        shm = Path("/dev/shm")
        return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


@dataclass(frozen=True)
class BenchResult:
    rows: tuple[Row, ...]
    machine: dict[str, object]
    settings: dict[str, object]
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "seconds": self.seconds,
            "rows": [row.to_json() for row in self.rows],
        }


# -- shared with benchmarks/ ----------------------------------------------------------------


def build_chain(directory: Path, layers: int, size: int = 1 << 20) -> Path:
    """layer-0000.qcow2 (top) -> layer-0001.qcow2 -> ... -> the last layer, without backing."""
    names = [f"layer-{index:04d}.qcow2" for index in range(layers)]
    for index, name in enumerate(names):
        below = names[index + 1].encode() if index + 1 < layers else None
        image = Qcow2Image(size, below, "qcow2" if below else None)
        (directory / name).write_bytes(encode(image))
    return directory / names[0]


def median_seconds(
    commands: Sequence[Sequence[str]], runs: int, cwd: Path | None = None
) -> list[float]:
    """The median wall time of ``runs`` runs of each command as a whole process.

    The commands take turns, run by run, so that a change in the machine's load while
    they are measured weighs on each of them alike instead of on whichever ran then.
    """
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for command, measured in zip(commands, times, strict=True):
            start = time.perf_counter()
            subprocess.run(
                list(command),
                cwd=cwd,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=SUBPROCESS_TIMEOUT,
            )
            measured.append(time.perf_counter() - start)
    return [statistics.median(measured) for measured in times]


def time_native(spec: ChainSpec, directory: Path) -> float:
    from images.build import BuildMethod, build

    start = time.perf_counter()
    build(spec, directory, BuildMethod.NATIVE)
    return time.perf_counter() - start


def time_qemu_img_loop(qemu_img: str, spec: ChainSpec, directory: Path) -> float:
    """One ``qemu-img create`` per layer, base first, ``-u`` wherever there is a backing."""
    directory.mkdir()
    start = time.perf_counter()
    for layer in reversed(spec.layers):
        command = [qemu_img, "create", "-q", "-f", layer.format]
        if layer.backing is not None:
            command += ["-b", layer.backing, "-F", str(layer.backing_format), "-u"]
        command += [layer.name, str(layer.size)]
        subprocess.run(
            command, cwd=directory, check=True, stdin=subprocess.DEVNULL, capture_output=True
        )
    return time.perf_counter() - start


def chain_reading(qemu_img: str, top: Path) -> list[dict[str, object]]:
    """What ``qemu-img info --backing-chain`` says of each layer, the file names left out."""
    keys = ("format", "virtual-size", "backing-filename", "backing-filename-format")
    done = subprocess.run(
        [qemu_img, "info", "--backing-chain", "--output=json", top.name],
        cwd=top.parent,
        check=True,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    return [{key: entry.get(key) for key in keys} for entry in json.loads(done.stdout)]


def explorer_rate(sequences: int, seed: int, workdir: Path | None = None) -> tuple[float, int]:
    """Sequences per second of one exploration, reference against itself."""
    from conformance.adapters.reference import ReferenceAdapter
    from conformance.explore import explore

    result = explore(
        ReferenceAdapter("libvirt-modern"),
        ReferenceAdapter("libvirt-modern"),
        max_examples=sequences,
        seed=seed,
        out_dir=None,
        workdir=workdir,
    )
    if result.finding is not None:
        raise BenchError("the reference disagreed with itself while exploring")
    return result.per_second, result.sequences


def runner_rate(cases_to_run: int) -> float:
    """Lifecycle cases per second through the catalogue runner (images from its cache)."""
    from conformance.adapters.reference import ReferenceAdapter
    from conformance.catalogue import load
    from conformance.runner import Runner

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


# -- the rows -------------------------------------------------------------------------------


class BenchError(Exception):
    """A measurement that could not be made; its row says so in one line."""


def chainsuite_command() -> list[str]:
    """The ``chainsuite`` executable next to this interpreter, else ``python -m``."""
    beside = Path(sys.executable).with_name("chainsuite")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("chainsuite")
    return [found] if found else [sys.executable, "-m", "conformance.cli"]


def probe_rows(settings: Settings, qemu_img: str | None, progress: Progress) -> list[Row]:
    from simulator.prober import Prober
    from simulator.profiles import get_profile

    rows: list[Row] = []
    largest = max(settings.probe_layers)
    bytes_row = Row(
        "probe-bytes-per-layer",
        f"header bytes read per well-formed layer ({largest} layers)",
        "B",
        target=Target(Comparison.AT_MOST, BYTES_PER_LAYER_TARGET),
    )
    for layers in settings.probe_layers:
        row_id = f"probe-{layers}"
        figure = f"chainsuite probe -o json, {layers} qcow2 layers"
        target = Target(Comparison.RATIO_AT_LEAST, PROBE_TARGET) if layers == largest else None
        with tempfile.TemporaryDirectory(prefix="chainsuite-bench-", dir=settings.scratch) as s:
            directory = Path(s)
            progress(f"probe: building a {layers}-layer chain")
            top = build_chain(directory, layers)
            prober = Prober(get_profile("qemu"))
            chain = prober.probe(str(top))
            if layers == largest:
                bytes_row = replace(
                    bytes_row,
                    value=prober.stats.header_bytes_read / len(chain),
                    runs=1,
                    details={"layers": len(chain), "bytes": prober.stats.header_bytes_read},
                )
            if qemu_img is None:
                rows.append(Row(row_id, figure, "s", skipped="qemu-img is not on PATH"))
                continue
            ours = [*chainsuite_command(), "probe", "--profile", "qemu", "-o", "json", top.name]
            theirs = [qemu_img, "info", "--backing-chain", "--output=json", top.name]
            listed = json.loads(
                subprocess.run(
                    theirs, cwd=directory, check=True, capture_output=True, timeout=600
                ).stdout
            )
            subprocess.run(ours, cwd=directory, check=True, stdout=subprocess.DEVNULL)
            progress(f"probe: {layers} layers, qemu-img and chainsuite x{settings.repeat}")
            qemu_seconds, our_seconds = median_seconds([theirs, ours], settings.repeat, directory)
        row = timed_row(row_id, figure, our_seconds, qemu_seconds, "qemu-img info", target)
        rows.append(
            replace(
                row,
                runs=settings.repeat,
                details={"layers": layers, "qemu-img-lists": len(listed), "we-list": len(chain)},
            )
        )
    return [*rows, bytes_row]


def build_row(settings: Settings, qemu_img: str | None, progress: Progress) -> Row:
    from images.spec import deep

    layers = settings.build_layers
    figure = f"native chain build, {layers} qcow2 layers"
    row_id = f"build-{layers}"
    if qemu_img is None:
        return Row(row_id, figure, "s", skipped="qemu-img is not on PATH")
    spec = deep("build-bench", layers)
    loops = max(1, min(settings.repeat, 3))
    with tempfile.TemporaryDirectory(
        prefix="chainsuite-build-bench-", dir=settings.scratch
    ) as scratch:
        root = Path(scratch)
        progress(f"build: native writer x{settings.repeat}")
        native = statistics.median(
            time_native(spec, root / f"native-{run}") for run in range(settings.repeat)
        )
        progress(f"build: qemu-img create -u loop x{loops} ({layers} processes each)")
        looped = statistics.median(
            time_qemu_img_loop(qemu_img, spec, root / f"qemu-img-{run}") for run in range(loops)
        )
        alike = chain_reading(qemu_img, root / "native-0" / spec.top) == chain_reading(
            qemu_img, root / "qemu-img-0" / spec.top
        )
    row = timed_row(
        row_id,
        figure,
        native,
        looped,
        "qemu-img create -u loop",
        Target(Comparison.RATIO_AT_LEAST, BUILD_TARGET),
    )
    return replace(
        row,
        runs=settings.repeat,
        details={
            "layers": layers,
            "qemu-img-loops": loops,
            "chains-read-alike": alike,
            "directory": str(root.parent),
        },
    )


def simulator_row(settings: Settings, progress: Progress) -> Row:
    """Operations per second of the standard workloads: in memory without the staleness
    oracle (the simulator alone), and on disk with and without it (details)."""
    from simulator.profiles import get_profile
    from simulator.storage import MemoryStorage
    from simulator.workloads import STANDARD, run

    profile = get_profile("libvirt-modern")
    progress(
        f"simulator: the {len(STANDARD)} standard workloads for {SIMULATOR_RUN_SECONDS} s"
        f" x{settings.repeat}, 3 ways"
    )

    def rate(track_staleness: bool, in_memory: bool) -> tuple[float, dict[str, int]]:
        rates = []
        per_workload: dict[str, list[float]] = {workload.name: [] for workload in STANDARD}
        for _ in range(settings.repeat):
            operations, seconds = 0, 0.0
            while seconds < SIMULATOR_RUN_SECONDS:
                for workload in STANDARD:
                    with tempfile.TemporaryDirectory(
                        prefix="chainsuite-bench-", dir=settings.scratch
                    ) as directory:
                        storage = MemoryStorage() if in_memory else None
                        result = run(
                            workload,
                            profile,
                            directory,
                            track_staleness=track_staleness,
                            storage=storage,
                        )
                    operations += result.operations
                    seconds += result.seconds
                    per_workload[workload.name].append(result.operations / result.seconds)
            rates.append(operations / seconds)
        medians = {name: round(statistics.median(values)) for name, values in per_workload.items()}
        return statistics.median(rates), medians

    in_memory, per_workload = rate(False, True)
    on_disk, _ = rate(False, False)
    tracked, per_workload_tracked = rate(True, False)
    return Row(
        "simulator-ops",
        "simulator operations/s (standard workloads, libvirt-modern, in memory)",
        "ops/s",
        in_memory,
        target=Target(Comparison.AT_LEAST, SIMULATOR_TARGET),
        runs=settings.repeat,
        details={
            "operations-per-pass": sum(len(workload.steps) for workload in STANDARD),
            "simulated-seconds-per-run-at-least": SIMULATOR_RUN_SECONDS,
            "per-workload": per_workload,
            "on-disk": on_disk,
            "on-disk-with-staleness-tracking": tracked,
            "per-workload-on-disk-with-staleness-tracking": per_workload_tracked,
        },
    )


def explorer_row(settings: Settings, progress: Progress) -> Row:
    from conformance.explore import explorer_images

    explorer_images()  # built once per process; not part of any figure
    runs = max(1, min(settings.repeat, 3))
    rates, ran = [], 0
    for run in range(runs):
        progress(f"explorer: {settings.explorer_sequences} sequences, run {run + 1}/{runs}")
        per_second, ran = explorer_rate(settings.explorer_sequences, seed=run + 1)
        rates.append(per_second)
    value = statistics.median(rates)
    progress(f"explorer: baseline, {ran} lifecycle cases through the runner")
    baseline = runner_rate(max(ran, 1))
    return Row(
        "explorer",
        "explorer sequences/s, reference vs reference",
        "seq/s",
        value,
        baseline,
        "catalogue runner, lifecycle cases/s (one side)",
        value / baseline if baseline > 0 else None,
        Target(Comparison.AT_LEAST, EXPLORER_TARGET),
        runs,
        details={"sequences-per-run": ran},
    )


def catalogue_row(
    row_id: str,
    figure: str,
    arguments: Sequence[str],
    runs: int,
    target: Target | None,
    settings: Settings,
    progress: Progress,
    timeout: float = SUBPROCESS_TIMEOUT,
) -> Row:
    """``chainsuite run ARGUMENTS`` as a whole process, the median of ``runs``."""
    command = [*chainsuite_command(), "run", *arguments]
    if settings.cases:
        command += ["-k", settings.cases]
    times, summary, status = [], "", 0
    for run in range(runs):
        progress(f"{row_id}: chainsuite run {' '.join(arguments)} ({run + 1}/{runs})")
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return Row(row_id, figure, "s", skipped=f"timed out after {timeout:.0f} s")
        times.append(time.perf_counter() - start)
        status = done.returncode
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if status not in (0, 1):
            last = done.stderr.strip().splitlines()[-1:] or [f"exit status {status}"]
            return Row(row_id, figure, "s", skipped=f"chainsuite run failed: {last[0]}")
    return Row(
        row_id,
        figure,
        "s",
        statistics.median(times),
        target=target,
        runs=runs,
        details={"command": command[1:], "summary": summary, "exit-status": status},
    )


def libvirt_unavailable() -> str | None:
    """Why no libvirt daemon answers on qemu:///system, or None when one does."""
    from conformance.adapters.base import AdapterError

    try:
        from conformance.adapters.libvirt import LibvirtAdapter

        adapter = LibvirtAdapter()
    except AdapterError as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    except Exception as error:  # libvirt-python raises its own errors
        return f"{type(error).__name__}: {error}".splitlines()[0]
    adapter.close()
    return None


def catalogue_rows(settings: Settings, qemu_img: str | None, progress: Progress) -> list[Row]:
    runs = max(1, min(settings.repeat, 3))
    rows = [
        catalogue_row(
            "catalogue-reference",
            "chainsuite run --impl reference (libvirt-modern)",
            ["--impl", "reference", "--profile", "libvirt-modern"],
            runs,
            Target(Comparison.AT_MOST, REFERENCE_CATALOGUE_TARGET),
            settings,
            progress,
        )
    ]
    qemu_figure = "chainsuite run --impl qemu-img (probe cases)"
    if qemu_img is None:
        rows.append(Row("catalogue-qemu-img", qemu_figure, "s", skipped="qemu-img is not on PATH"))
    else:
        rows.append(
            catalogue_row(
                "catalogue-qemu-img",
                qemu_figure,
                ["--impl", "qemu-img"],
                runs,
                None,
                settings,
                progress,
            )
        )
    libvirt_figure = "chainsuite run --impl libvirt (lifecycle cases)"
    libvirt_target = Target(Comparison.AT_MOST, LIBVIRT_CATALOGUE_TARGET)
    if settings.quick:
        reason: str | None = "--quick"
    else:
        progress("catalogue-libvirt: is a daemon answering on qemu:///system?")
        reason = libvirt_unavailable()
    if reason is not None:
        progress(f"libvirt: skipped ({reason})")
        rows.append(
            Row("catalogue-libvirt", libvirt_figure, "s", target=libvirt_target, skipped=reason)
        )
    else:
        arguments = ["--impl", "libvirt", "-k", "lifecycle.*"]
        if LIBVIRT_EXPECTATIONS.is_file():
            arguments += ["--expectations", str(LIBVIRT_EXPECTATIONS)]
        rows.append(
            catalogue_row(
                "catalogue-libvirt",
                libvirt_figure,
                arguments,
                1,
                libvirt_target,
                replace(settings, cases=None),
                progress,
                timeout=LIBVIRT_TIMEOUT,
            )
        )
    return rows


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "cpu-count": os.cpu_count(),
        "load-average": _load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    from images import qemu_img

    try:
        info["qemu-img"] = qemu_img.version()
    except qemu_img.QemuImgError as error:
        info["qemu-img"] = f"unavailable: {error}".splitlines()[0]
    return info


def _load_average() -> list[float] | None:
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except OSError:
        return None


def _guarded(row_ids: Sequence[str], figure: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """The rows ``measure`` gives, or each of ``row_ids`` skipped with its error in one line."""
    try:
        return measure()
    except KeyboardInterrupt:
        raise
    except subprocess.CalledProcessError as error:
        reason = f"{Path(str(error.cmd[0])).name} exited with status {error.returncode}"
    except subprocess.TimeoutExpired as error:
        reason = f"timed out after {error.timeout:.0f} s"
    except Exception as error:  # a row is skipped, the run goes on
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
    return [Row(row_id, figure, "", skipped=reason) for row_id in row_ids]


def compile_bytecode() -> str:
    """Compiles the package's bytecode, as ``pip install`` does, so that every timed process
    runs what an installed suite runs; without it (PYTHONDONTWRITEBYTECODE, an editable
    install) each process would compile its sources anew."""
    import compileall

    import conformance
    import images
    import simulator

    packages = [Path(package.__path__[0]) for package in (conformance, images, simulator)]
    compiled = all(compileall.compile_dir(path, quiet=1) for path in packages)
    return "compiled" if compiled else "not all compiled (the package may be read-only)"


def run_bench(settings: Settings, progress: Progress | None = None) -> BenchResult:
    """Measures every row under ``settings``; a row that cannot be measured says why."""
    say: Progress = progress if progress is not None else (lambda _message: None)
    started = time.perf_counter()
    machine = machine_info()
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        say("qemu-img is not on PATH: the rows that need it are skipped")
    machine["bytecode"] = compile_bytecode()
    probe_ids = [f"probe-{layers}" for layers in settings.probe_layers]
    figures: dict[str, tuple[list[str], Callable[[], list[Row]]]] = {
        "probe": (
            [*probe_ids, "probe-bytes-per-layer"],
            lambda: probe_rows(settings, qemu_img, say),
        ),
        "build": (
            [f"build-{settings.build_layers}"],
            lambda: [build_row(settings, qemu_img, say)],
        ),
        "simulator": (["simulator-ops"], lambda: [simulator_row(settings, say)]),
        "explorer": (["explorer"], lambda: [explorer_row(settings, say)]),
        "catalogue": (
            ["catalogue-reference", "catalogue-qemu-img", "catalogue-libvirt"],
            lambda: catalogue_rows(settings, qemu_img, say),
        ),
    }
    rows: list[Row] = []
    for figure, (row_ids, measure) in figures.items():
        if figure in settings.figures:
            rows += _guarded(row_ids, figure, measure)
    machine["load-average-after"] = _load_average()
    return BenchResult(
        tuple(rows),
        machine,
        {
            "probe-layers": list(settings.probe_layers),
            "build-layers": settings.build_layers,
            "repeat": settings.repeat,
            "explorer-sequences": settings.explorer_sequences,
            "quick": settings.quick,
            "cases": settings.cases,
            "figures": [figure for figure in FIGURES if figure in settings.figures],
            "scratch": str(settings.scratch) if settings.scratch else tempfile.gettempdir(),
        },
        time.perf_counter() - started,
    )


# -- output ---------------------------------------------------------------------------------


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{_number(value)} {unit}"


def render_table(result: BenchResult) -> str:
    """The rows as an aligned text table, then the machine they were measured on."""
    header = ("figure", "value", "baseline", "ratio", "target", "met")
    lines: list[tuple[str, ...]] = [header]
    for row in result.rows:
        if row.skipped is not None:
            lines.append((row.id, f"skipped ({row.skipped})", "", "", "", ""))
            continue
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        baseline = (
            f"{_value_text(row.baseline, row.unit)} {row.baseline_label}"
            if row.baseline is not None
            else "-"
        )
        lines.append(
            (
                row.id,
                _value_text(row.value, row.unit),
                baseline,
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                "-" if row.target is None else row.target.text(row.unit),
                met,
            )
        )
    widths = [max(len(line[index]) for line in lines if len(line) > index) for index in range(6)]
    text = []
    for line in lines:
        if line[1].startswith("skipped"):
            text.append(f"{line[0]:<{widths[0]}}  {line[1]}")
        else:
            text.append(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(line, widths, strict=True)
                ).rstrip()
            )
    machine = result.machine
    text.append(
        f"machine: {machine.get('cpu-count')} CPUs, load {machine.get('load-average')} "
        f"-> {machine.get('load-average-after')}, {machine.get('qemu-img')}; "
        f"median of {result.settings['repeat']} runs; {result.seconds:.0f} s in all"
    )
    return "\n".join(text)


def render_json(result: BenchResult) -> str:
    return json.dumps(result.to_json(), indent=2) + "\n"
