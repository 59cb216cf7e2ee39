"""The differential explorer: random operation sequences run on two implementations, compared.

Hypothesis draws a sequence of lifecycle operations (a domain set up first, then
snapshots, block pulls, commits and copies, their job events stepped and
delivered in either order, pivots, aborts, hotplug, media changes, daemon
restarts, stops) interleaved with faults on the image files (deleted, replaced,
made unreadable, header rewritten). Each step runs on the implementation and on
the oracle through the Adapter protocol, each side in its own copy of a small
fixed image set, and the two answers are compared as the case runner's
``judge`` compares an answer with an expectation (rc, error code, and a chain's
filenames, formats, indexes and end). After every step that can change state,
the chains both sides cache for every disk named so far are compared as well,
so a cache that went stale on one side only is caught where it happens.

The first difference fails the example and Hypothesis shrinks the sequence.
The shrunk sequence becomes a catalogue case (id ``found.*``) whose
expectations are the oracle's answers, so that ``chainsuite run`` judges the
implementation by the oracle's outcome; both sides' answers are kept in the
case's ``observed`` object for a person to read. ``replay`` re-runs such a file
on both sides and shows where they part.

A sequence is a list Hypothesis draws, not a rule-based state machine: deleting
steps from a list is what shrinks a difference to a few steps, and each step's
arguments come from one integer, which keeps drawing cheap. The sequences are
not told what state the sides are in; the choices are weighted so that most
steps address the domain set up first, its disk and the images of its chain.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.errors import FlakyFailure, FlakyReplay

from conformance.adapters.base import Adapter, AdapterError, ImplementationInfo
from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import OP_CAPABILITIES, Case, CatalogueError, load_cases, validate_file
from conformance.runner import DIR_PLACEHOLDER, default_cache_root, judge, materialize, substitute
from images.build import BuildMethod, build
from images.native import SparseImage, write_image
from images.spec import ChainSpec, LayerSpec

Step = dict[str, Any]
Answer = dict[str, Any]

EXPLORER_VERSION = 1
"""Part of the example database's key: a changed generator does not replay old examples."""
DEFAULT_MAX_STEPS = 20
"""Operations drawn after the set-up steps, at most."""
CHUNK_STEPS = 10
DEFAULT_DATABASE = Path(".hypothesis") / "explore"
FOUND_PREFIX = "found."
RAM_SCRATCH = Path("/dev/shm")
UNANSWERED = "unanswered"
"""The key an answer gets when the adapter raised instead of answering."""

IMAGE_SPEC = ChainSpec(
    name="explore",
    layers=(
        LayerSpec("top.qcow2", "qcow2", "mid.qcow2", "qcow2", compat="0.10"),
        LayerSpec("mid.qcow2", "qcow2", "base.qcow2", "qcow2", compat="0.10"),
        LayerSpec("base.qcow2", "qcow2", compat="0.10"),
        LayerSpec("spare.qcow2", "qcow2", compat="0.10"),
        LayerSpec("cdrom.raw", "raw", size=64 * 1024),
    ),
    description="the explorer's images: top <- mid <- base, a spare qcow2 and a raw cdrom",
)
"""qcow2 version 2 with recorded formats, so every era reads the same chain."""

PASSIVE_OPS = frozenset({"chain", "counters", "probe"})
"""Operations that change nothing, after which the cached chains are not compared again."""


class ExploreError(Exception):
    """Exploration cannot run: no common capabilities, a case that cannot be set up, ..."""


# -- images --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    """Image files held in memory, written into a fresh directory per sequence."""

    files: tuple[tuple[str, SparseImage], ...]

    def place(self, directory: Path) -> None:
        for name, image in self.files:
            write_image(directory / name, image)


@functools.cache
def explorer_images() -> ImageSet:
    """``IMAGE_SPEC`` built once with the native writer and kept in memory."""
    staging = Path(tempfile.mkdtemp(prefix="chainsuite-explore-images-"))
    try:
        build(IMAGE_SPEC, staging, BuildMethod.NATIVE)
        files = tuple(
            (layer.name, SparseImage.of((staging / layer.name).read_bytes()))
            for layer in IMAGE_SPEC.layers
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImageSet(files)


# -- what is generated ---------------------------------------------------------------------


def _file(name: str) -> str:
    return f"{DIR_PLACEHOLDER}/{name}"


# Choices are listed simplest first: Hypothesis shrinks a sampled choice towards the first.
# A choice listed n times is drawn n times as often: most steps address the domain the
# sequence set up and its first disk, and the images of its chain, so that operations meet.
DOMAINS = ("guest",) * 9 + ("other",)
TARGETS = ("vda", "vda", "vda", "vda", "hdc", "vdb")
HOTPLUG_TARGETS = ("vdb", "vdc")
TOP_SOURCES: tuple[tuple[str, str | None], ...] = (
    *(("top.qcow2", "qcow2"),) * 6,
    ("mid.qcow2", "qcow2"),
    ("top.qcow2", None),
    ("spare.qcow2", "qcow2"),
    ("base.qcow2", "qcow2"),
    ("cdrom.raw", "raw"),
)
CDROM_MEDIA: tuple[tuple[str, str | None] | None, ...] = (
    None,
    ("cdrom.raw", "raw"),
    ("", None),
    ("spare.qcow2", "qcow2"),
)
"""A domain's cdrom: none, a raw image, an empty drive, a qcow2 image."""
NEW_MEDIA: tuple[tuple[str | None, str | None], ...] = (
    ("cdrom.raw", "raw"),
    (None, None),
    ("spare.qcow2", "qcow2"),
    ("top.qcow2", "qcow2"),
)
IMAGE_FILES = ("top.qcow2", "mid.qcow2", "base.qcow2", "spare.qcow2", "cdrom.raw")
QCOW2_FILES = ("top.qcow2", "mid.qcow2", "base.qcow2", "spare.qcow2", "snap1.qcow2")
FAULT_FILES = (
    "base.qcow2",
    "base.qcow2",
    "mid.qcow2",
    "mid.qcow2",
    "top.qcow2",
    "spare.qcow2",
    "cdrom.raw",
    "snap1.qcow2",
)
OVERLAYS = ("snap1.qcow2", "snap1.qcow2", "snap2.qcow2", "spare.qcow2", "copy.qcow2", "top.qcow2")
COPY_DESTINATIONS = ("copy.qcow2", "copy.qcow2", "spare.qcow2", "snap1.qcow2")
PULL_BASES = (
    None,
    None,
    _file("mid.qcow2"),
    _file("base.qcow2"),
    "mid.qcow2",
    "base.qcow2",
    "vda[1]",
    "vda[2]",
)
COMMIT_TOPS = (
    _file("mid.qcow2"),
    _file("mid.qcow2"),
    None,
    "mid.qcow2",
    "vda[1]",
    _file("top.qcow2"),
    _file("snap1.qcow2"),
)
COMMIT_BASES = (None, None, _file("base.qcow2"), _file("mid.qcow2"), "base.qcow2", "vda[2]")
REWRITTEN_BACKINGS = (None, "base.qcow2", "spare.qcow2", _file("base.qcow2"), "top.qcow2")
REWRITTEN_FORMATS = ("qcow2", None, "raw")
MOSTLY_FALSE = (False, False, False, True)
USER_BACKING = ("none", "mid", "mid-terminated")
"""A <backingStore> for the top: none, mid given by the user, mid with nothing below it."""


def step_requirements(step: Step) -> frozenset[str]:
    """The capabilities one step needs, as the catalogue counts them for a case."""
    needed = set(OP_CAPABILITIES[step["op"]])
    if step.get("fault") == "unreadable":
        needed.add("unreadable-files")
    if step["op"] == "block-commit" and step.get("active"):
        needed.add("active-commit")
    disks = [*step.get("disks", ()), *([step["disk"]] if "disk" in step else [])]
    if any(disk.get("backing") or disk.get("backing_terminated") for disk in disks):
        needed.add("user-backing-store")
    return frozenset(needed)


def _disk(source: tuple[str, str | None], backing: str = "none", target: str = "vda") -> Step:
    path, fmt = source
    disk: Step = {"target": target, "path": _file(path), "format": fmt}
    if backing != "none" and path == "top.qcow2":
        disk["backing"] = [{"path": _file("mid.qcow2"), "format": "qcow2"}]
        if backing == "mid-terminated":
            disk["backing_terminated"] = True
    return disk


def _domain_disks(
    source: tuple[str, str | None], cdrom: tuple[str, str | None] | None, backing: str
) -> list[Step]:
    disks = [_disk(source, backing)]
    if cdrom is not None:
        path, fmt = cdrom
        disks.append(
            {
                "target": "hdc",
                "path": _file(path) if path else None,
                "format": fmt,
                "device": "cdrom",
            }
        )
    return disks


@dataclass(frozen=True)
class OperationShape:
    """How steps of one operation are made: its choices, and a step from one value of each."""

    op: str
    weight: int
    """How often the operation is drawn, relative to the others."""
    choices: tuple[tuple[Any, ...], ...]
    make: Callable[..., Step]

    def step(self, number: int) -> Step:
        """The step ``number`` picks: read as a mixed-radix number, a digit per choice.

        Every argument comes from one integer drawn by Hypothesis, which costs far less than
        a draw per argument, and shrinks towards 0: the first value of every choice.
        """
        picked = []
        for values in self.choices:
            number, digit = divmod(number, len(values))
            picked.append(values[digit])
        return self.make(*picked)


ARGUMENT_NUMBERS = 1 << 40
"""The range of the integer a step's arguments are read from (far above any product)."""


def operation_shapes(capabilities: frozenset[str]) -> list[OperationShape]:
    """Every operation both sides offer, with the arguments it may get from them."""
    backing = USER_BACKING if "user-backing-store" in capabilities else ("none",)
    disks = (TOP_SOURCES, CDROM_MEDIA, backing)
    fault_kinds = ["delete", "delete", "replace", "rewrite-header"]
    if "unreadable-files" in capabilities:
        fault_kinds += ["unreadable", "unreadable"]
    active = (False, True) if "active-commit" in capabilities else (False,)

    def on_disk(op: str, weight: int) -> OperationShape:
        return OperationShape(
            op, weight, (DOMAINS, TARGETS), lambda d, t: {"op": op, "domain": d, "target": t}
        )

    def on_domain(op: str, weight: int) -> OperationShape:
        return OperationShape(op, weight, (DOMAINS,), lambda d: {"op": op, "domain": d})

    shapes = [
        OperationShape(
            "define",
            1,
            disks,
            lambda *disk: {"op": "define", "domain": "guest", "disks": _domain_disks(*disk)},
        ),
        OperationShape(
            "create",
            1,
            (("other", "guest"), *disks),
            lambda d, *disk: {"op": "create", "domain": d, "disks": _domain_disks(*disk)},
        ),
        on_domain("start", 2),
        on_domain("destroy", 1),
        on_domain("undefine", 1),
        OperationShape(
            "attach",
            2,
            (DOMAINS, HOTPLUG_TARGETS, TOP_SOURCES),
            lambda d, t, s: {"op": "attach", "domain": d, "disk": _disk(s, target=t)},
        ),
        on_disk("detach", 1),
        OperationShape(
            "change-media",
            2,
            (DOMAINS, ("hdc", "hdc", "vda"), NEW_MEDIA),
            lambda d, t, m: {
                "op": "change-media",
                "domain": d,
                "target": t,
                "path": _file(m[0]) if m[0] else None,
                "format": m[1],
            },
        ),
        OperationShape(
            "snapshot",
            6,
            (DOMAINS, TARGETS, OVERLAYS, (False, True)),
            lambda d, t, o, r: {
                "op": "snapshot",
                "domain": d,
                "target": t,
                "overlay": _file(o),
                "reuse": r,
            },
        ),
        OperationShape(
            "block-pull",
            4,
            (DOMAINS, TARGETS, PULL_BASES),
            lambda d, t, b: {"op": "block-pull", "domain": d, "target": t, "base": b},
        ),
        OperationShape(
            "block-commit",
            6,
            (DOMAINS, TARGETS, COMMIT_TOPS, COMMIT_BASES, active, MOSTLY_FALSE, MOSTLY_FALSE),
            lambda d, t, top, base, a, s, x: {
                "op": "block-commit",
                "domain": d,
                "target": t,
                "top": top,
                "base": base,
                "active": a,
                "shallow": s,
                "delete": x,
            },
        ),
        OperationShape(
            "block-copy",
            4,
            (DOMAINS, TARGETS, COPY_DESTINATIONS, MOSTLY_FALSE, MOSTLY_FALSE),
            lambda d, t, dest, s, r: {
                "op": "block-copy",
                "domain": d,
                "target": t,
                "destination": _file(dest),
                "shallow": s,
                "reuse": r,
            },
        ),
        on_disk("job-step", 4),
        on_disk("job-wait", 8),
        OperationShape(
            "deliver", 4, (("raised", "reversed"),), lambda o: {"op": "deliver", "order": o}
        ),
        on_disk("pivot", 4),
        on_disk("abort", 2),
        OperationShape("daemon-restart", 2, (), lambda: {"op": "daemon-restart"}),
        on_disk("chain", 1),
        OperationShape(
            "determine-chain",
            6,
            (DOMAINS, TARGETS, (False, True)),
            lambda d, t, f: {"op": "determine-chain", "domain": d, "target": t, "force": f},
        ),
        OperationShape(
            "fault",
            6,
            (
                tuple(fault_kinds),
                FAULT_FILES,
                IMAGE_FILES,
                QCOW2_FILES,
                REWRITTEN_BACKINGS,
                REWRITTEN_FORMATS,
            ),
            _fault,
        ),
    ]
    return [
        shape
        for shape in shapes
        if all(needed in capabilities for needed in OP_CAPABILITIES[shape.op])
    ]


def _fault(
    kind: str,
    path: str,
    content_from: str,
    qcow2_path: str,
    backing: str | None,
    backing_format: str | None,
) -> Step:
    if kind == "replace":
        return {
            "op": "fault",
            "fault": kind,
            "path": _file(path),
            "content_from": _file(content_from),
        }
    if kind == "rewrite-header":
        return {
            "op": "fault",
            "fault": kind,
            "path": _file(qcow2_path),
            "backing": backing,
            "backing_format": backing_format if backing else None,
        }
    return {"op": "fault", "fault": kind, "path": _file(path)}


def sequence_strategy(
    capabilities: frozenset[str], max_steps: int = DEFAULT_MAX_STEPS
) -> st.SearchStrategy[list[Step]]:
    """Sequences of steps using only ``capabilities``: set-up steps, then up to ``max_steps``."""
    if "lifecycle" not in capabilities:
        raise ExploreError("exploration needs the 'lifecycle' capability on both sides")
    shapes = operation_shapes(capabilities)
    # The weights are repetitions in a sample: Hypothesis shrinks towards its first entry.
    drawn = tuple(shape for shape in shapes for _ in range(shape.weight))
    body = st.builds(
        OperationShape.step, st.sampled_from(drawn), st.integers(0, ARGUMENT_NUMBERS - 1)
    )
    by_op = {shape.op: shape for shape in shapes}
    setups = ["create", "define-start"] if "create" in by_op else ["define-start"]
    setup = st.builds(
        _setup_steps,
        st.sampled_from(setups),
        st.integers(0, ARGUMENT_NUMBERS - 1).map(by_op["define"].step),
    )
    # Hypothesis draws lists of about five elements on average, whatever their maximum: the
    # body is made of chunks of at most ten, each shrinking on its own, to draw longer ones.
    chunk_sizes = [CHUNK_STEPS] * (max_steps // CHUNK_STEPS)
    if max_steps % CHUNK_STEPS:
        chunk_sizes.append(max_steps % CHUNK_STEPS)
    chunks = [st.lists(body, max_size=size) for size in chunk_sizes]
    return st.builds(
        lambda first, *rest: [*first, *(step for chunk in rest for step in chunk)],
        setup,
        *chunks,
    )


def _setup_steps(kind: str, define: Step) -> list[Step]:
    """A running domain ``guest`` to work on: created (transient), or defined and started."""
    if kind == "create":
        return [{**define, "op": "create"}]
    return [define, {"op": "start", "domain": "guest"}]


# -- running a sequence on both sides ------------------------------------------------------


def scratch_root(*adapters: Adapter) -> Path | None:
    """Where sequences' directories go: a RAM-backed file system when every adapter is the
    in-process reference, since making and removing small files on disk costs more than
    running a whole sequence; the system's temporary directory otherwise (None), as another
    process (qemu under libvirt, a ``cmd:`` program) must see the files where it expects them.
    """
    in_process = all(isinstance(adapter, ReferenceAdapter) for adapter in adapters)
    if in_process and RAM_SCRATCH.is_dir() and os.access(RAM_SCRATCH, os.W_OK | os.X_OK):
        return RAM_SCRATCH
    return None


@dataclass(frozen=True)
class Exchange:
    """One step and both sides' answers to it."""

    step: Step
    implementation: Answer
    oracle: Answer
    problem: str | None
    """Why the implementation's answer is not the oracle's; None when they agree."""
    observation: bool = False
    """A ``chain`` query the explorer added after a step, not a step of the sequence."""


@dataclass(frozen=True)
class Trace:
    """A sequence as it ran on both sides, up to where it stopped.

    The answers are as each side gave them, naming files in its own case directory
    (``directories``: the implementation's, then the oracle's); ``neutral`` writes both as
    ``$DIR``, which is only done for the traces a person reads.
    """

    exchanges: tuple[Exchange, ...]
    directories: tuple[str, str] = (DIR_PLACEHOLDER, DIR_PLACEHOLDER)

    def neutral(self) -> Trace:
        """The trace with both directories written ``$DIR``, and the problems said so too."""
        impl_dir, oracle_dir = self.directories
        exchanges = []
        for exchange in self.exchanges:
            impl_answer = neutral(exchange.implementation, impl_dir)
            oracle_answer = neutral(exchange.oracle, oracle_dir)
            problem = compare(impl_answer, oracle_answer)
            exchanges.append(
                replace(exchange, implementation=impl_answer, oracle=oracle_answer, problem=problem)
            )
        return Trace(tuple(exchanges))

    @property
    def parting(self) -> int | None:
        """The index of the first exchange where the sides part, or None."""
        for index, exchange in enumerate(self.exchanges):
            if exchange.problem is not None:
                return index
        return None


def expectation_of(answer: Answer) -> dict[str, Any]:
    """The outcome a case step expects when ``answer`` is the right one (as ``judge`` reads it)."""
    outcome: dict[str, Any] = {}
    error = answer.get("error")
    rc = answer.get("rc")
    if error:
        outcome["error"] = error.get("code", "unknown")
        if rc == 0:
            outcome["rc"] = 0
    elif rc != 0:
        outcome["rc"] = -1
    if "chain" in answer:
        chain = answer["chain"]
        if chain is None:
            outcome["chain"] = None
        else:
            outcome["chain"] = [
                {key: layer[key] for key in ("filename", "format", "index") if key in layer}
                for layer in chain
            ]
            if "terminated" in answer:
                outcome["terminated"] = answer["terminated"]
    return outcome


def compare(
    implementation: Answer, oracle: Answer, directories: tuple[str, str] | None = None
) -> str | None:
    """Why the implementation's answer differs from the oracle's, or None when it does not.

    The case runner's ``judge`` decides, with the oracle's answer as the expectation; an
    error the implementation reports where the oracle reports none also counts. With
    ``directories`` (the implementation's case directory, then the oracle's), the oracle's
    file names are read as if in the implementation's directory.
    """
    if UNANSWERED in implementation or UNANSWERED in oracle:
        if UNANSWERED in implementation and UNANSWERED in oracle:
            return None
        side = "the implementation" if UNANSWERED in implementation else "the oracle"
        message = implementation.get(UNANSWERED) or oracle.get(UNANSWERED)
        return f"{side} did not answer: {message}"
    expected = expectation_of(oracle)
    if directories is not None and expected.get("chain"):
        impl_dir, oracle_dir = directories
        for layer in expected["chain"]:
            if "filename" in layer:
                layer["filename"] = layer["filename"].replace(oracle_dir, impl_dir)
    problem = judge(implementation, expected)
    if problem is None and not oracle.get("error") and implementation.get("error"):
        code = implementation["error"].get("code")
        problem = f"expected no error, got {code}"
    return problem


def neutral(value: Any, directory: str) -> Any:
    """``value`` with the side's case directory written as ``$DIR``."""
    if isinstance(value, str):
        return value.replace(directory, DIR_PLACEHOLDER)
    if isinstance(value, list):
        return [neutral(item, directory) for item in value]
    if isinstance(value, dict):
        return {key: neutral(item, directory) for key, item in value.items()}
    return value


def _ask(adapter: Adapter, op: str, args: dict[str, Any]) -> Answer:
    """The adapter's answer; a failure to answer becomes an answer saying so."""
    try:
        return adapter.call(op, args)
    except AdapterError as error:
        return {"rc": None, UNANSWERED: str(error)}
    except Exception as error:  # an in-process adapter that crashed: a finding, not our crash
        return {"rc": None, UNANSWERED: f"{type(error).__name__}: {error}"}


class SetupFailed(Exception):
    """``begin_case`` failed on one side: nothing can be compared."""


@dataclass
class PairRunner:
    """Runs step sequences on an implementation and an oracle, each in its own directory."""

    implementation: Adapter
    oracle: Adapter
    workroot: Path
    """Where each sequence's two directories are made (and removed)."""
    cleanup_problems: list[str] = field(default_factory=list)

    def run(
        self,
        steps: Sequence[Step],
        place: Callable[[Path], None],
        *,
        observe: bool = True,
        stop_at_parting: bool = True,
    ) -> Trace:
        """Both sides run ``steps`` ($DIR form) from freshly placed images.

        With ``observe``, after each step that may change state both sides are asked for the
        chain of every disk the sequence has named so far.
        """
        with self._case(place) as (impl_dir, oracle_dir):
            exchanges: list[Exchange] = []
            watched: dict[tuple[str, str], None] = {}
            directories = (str(impl_dir), str(oracle_dir))

            def exchange(step: Step, observation: bool = False) -> Exchange:
                args = {key: value for key, value in step.items() if key not in ("expect", "note")}
                op = args.pop("op")
                if observation:  # names no file: nothing to substitute
                    impl_answer = _ask(self.implementation, op, args)
                    oracle_answer = _ask(self.oracle, op, dict(args))
                else:
                    impl_answer = _ask(self.implementation, op, substitute(args, impl_dir))
                    oracle_answer = _ask(self.oracle, op, substitute(args, oracle_dir))
                problem = compare(impl_answer, oracle_answer, directories)
                made = Exchange(step, impl_answer, oracle_answer, problem, observation)
                exchanges.append(made)
                return made

            for step in steps:
                made = exchange(step)
                if made.problem is not None and stop_at_parting:
                    break
                if UNANSWERED in made.implementation and UNANSWERED in made.oracle:
                    break  # neither side's state is known any more
                _watch(step, watched)
                if not observe or step["op"] in PASSIVE_OPS:
                    continue
                parted = False
                for domain, target in watched:
                    query = {"op": "chain", "domain": domain, "target": target}
                    if exchange(query, observation=True).problem is not None:
                        parted = True
                        break
                if parted and stop_at_parting:
                    break
            return Trace(tuple(exchanges), directories)

    @contextlib.contextmanager
    def _case(self, place: Callable[[Path], None]) -> Iterator[tuple[Path, Path]]:
        """Two fresh directories with the images, begun on both sides; all undone afterwards."""
        with contextlib.ExitStack() as stack:
            directories = []
            for side in ("impl", "oracle"):
                directory = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=self.workroot))
                stack.callback(shutil.rmtree, directory, ignore_errors=True)
                place(directory)
                directories.append(directory)
            for adapter, directory, side in (
                (self.implementation, directories[0], "implementation"),
                (self.oracle, directories[1], "oracle"),
            ):
                try:
                    adapter.begin_case(directory)
                except AdapterError as error:
                    raise SetupFailed(f"the {side} could not begin a case: {error}") from None
                stack.callback(self._end_case, adapter, side)
            yield directories[0], directories[1]

    def _end_case(self, adapter: Adapter, side: str) -> None:
        try:
            adapter.end_case()
        except AdapterError as error:
            self.cleanup_problems.append(f"the {side} failed to clean up: {error}")


def _watch(step: Step, watched: dict[tuple[str, str], None]) -> None:
    """Remembers the disks a step names, whose chains are compared after each step."""
    if step["op"] in ("define", "create"):
        for disk in step.get("disks", ()):
            watched.setdefault((step["domain"], disk["target"]), None)
    elif step["op"] == "attach":
        watched.setdefault((step["domain"], step["disk"]["target"]), None)


# -- findings and case files ---------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A shrunk sequence on which the two sides part."""

    steps: tuple[Step, ...]
    """The steps as a case has them ($DIR for the case directory), the parting one last."""
    parting_index: int
    """Where they part: an index into ``steps``."""
    implementation_answer: Answer
    oracle_answer: Answer
    problem: str
    answers: tuple[tuple[Answer, Answer], ...]
    """Each step's (implementation, oracle) answers."""
    case_path: Path | None = None

    @property
    def parting_step(self) -> Step:
        return self.steps[self.parting_index]

    @classmethod
    def of(cls, trace: Trace) -> Finding:
        """The steps of ``trace`` up to the parting one; agreeing observations are left out."""
        trace = trace.neutral()
        parting = trace.parting
        if parting is None:
            raise ValueError("the trace has no difference")
        kept = [
            exchange
            for exchange in trace.exchanges[: parting + 1]
            if not exchange.observation or exchange.problem is not None
        ]
        last = kept[-1]
        assert last.problem is not None
        return cls(
            steps=tuple(exchange.step for exchange in kept),
            parting_index=len(kept) - 1,
            implementation_answer=last.implementation,
            oracle_answer=last.oracle,
            problem=last.problem,
            answers=tuple((exchange.implementation, exchange.oracle) for exchange in kept),
        )


@dataclass(frozen=True)
class ExploreResult:
    sequences: int
    """Sequences run on both sides, shrinking included."""
    seconds: float
    finding: Finding | None
    cleanup_problems: tuple[str, ...] = ()
    repeats: int = 0
    """Sequences Hypothesis drew again after both sides had agreed on them: not run again."""

    @property
    def per_second(self) -> float:
        return self.sequences / self.seconds if self.seconds > 0 else 0.0


def side_label(info: ImplementationInfo) -> str:
    """``name-profile`` as an id can hold it."""
    text = f"{info.name}-{info.profile}".lower()
    return re.sub(r"[^a-z0-9._-]+", "-", text).strip("-._") or "impl"


def case_id_for(
    finding: Finding, implementation: ImplementationInfo, oracle: ImplementationInfo
) -> str:
    """``found.<impl>-vs-<oracle>-<hash of the steps>``."""
    digest = hashlib.sha256(json.dumps(finding.steps, sort_keys=True).encode()).hexdigest()[:8]
    return f"{FOUND_PREFIX}{side_label(implementation)}-vs-{side_label(oracle)}-{digest}"


def case_document(
    finding: Finding,
    implementation: ImplementationInfo,
    oracle: ImplementationInfo,
    *,
    case_id: str,
    provenance_ref: str,
) -> dict[str, Any]:
    """The finding as a case file: each step expects the oracle's answer, under every profile."""
    steps = []
    for step, (_, oracle_answer) in zip(finding.steps, finding.answers, strict=True):
        written = dict(step)
        if UNANSWERED not in oracle_answer:
            written["expect"] = {"default": expectation_of(oracle_answer)}
        steps.append(written)
    parting = finding.parting_index + 1
    description = (
        f"Found by the differential explorer: {implementation.name} ({implementation.profile}) "
        f"and {oracle.name} ({oracle.profile}) part at step {parting} "
        f"({finding.parting_step['op']}): {finding.problem}. Every step expects what "
        f"{oracle.name} ({oracle.profile}) answered."
    )
    requires = sorted(
        {"user-backing-store"} & set().union(*(step_requirements(step) for step in finding.steps))
    )
    case: dict[str, Any] = {
        "id": case_id,
        "description": description,
        "provenance": [
            {
                "kind": "explorer",
                "ref": provenance_ref,
                "note": "shrunk by Hypothesis; the expectations are the oracle's answers",
            }
        ],
        "images": [{"spec": IMAGE_SPEC.to_json()}],
        "steps": steps,
        "observed": {
            "implementation": implementation.to_json(),
            "oracle": oracle.to_json(),
            "parts_at": parting,
            "problem": finding.problem,
            "answers": [
                {"implementation": impl_answer, "oracle": oracle_answer}
                for impl_answer, oracle_answer in finding.answers
            ],
        },
    }
    if requires:
        case["requires"] = requires
    return {"description": f"A difference the explorer found ({case_id})", "cases": [case]}


def write_finding(
    finding: Finding,
    implementation: ImplementationInfo,
    oracle: ImplementationInfo,
    out_dir: Path,
    provenance_ref: str,
) -> Path:
    """Writes the finding as a new case file in ``out_dir`` (an existing file is never replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base_id = case_id_for(finding, implementation, oracle)
    for attempt in range(1, 1000):
        case_id = base_id if attempt == 1 else f"{base_id}-{attempt}"
        document = case_document(
            finding, implementation, oracle, case_id=case_id, provenance_ref=provenance_ref
        )
        validate_file(document, case_id)
        load_cases(document, case_id)
        path = out_dir / f"{case_id}.json"
        try:
            with open(path, "x") as file:
                json.dump(document, file, indent=2)
                file.write("\n")
        except FileExistsError:
            continue
        return path
    raise ExploreError(f"{out_dir}: too many files named {base_id}*.json")


# -- exploring -----------------------------------------------------------------------------


class _Parted(Exception):
    """Raised inside the Hypothesis test when the two sides part (Hypothesis shrinks it)."""

    def __init__(self, trace: Trace) -> None:
        super().__init__(Finding.of(trace).problem)
        self.trace = trace


def _database_key(
    implementation: ImplementationInfo, oracle: ImplementationInfo, max_steps: int
) -> bytes:
    identity = json.dumps(
        [EXPLORER_VERSION, max_steps, implementation.to_json(), oracle.to_json()],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(identity.encode()).digest()


def hypothesis_settings(max_examples: int, seed: int | None, database: Path | None) -> settings:
    """Hypothesis' settings for one exploration.

    The example database (under ``database``) is used only for a run without ``seed`` and
    outside CI (the environment variable CI set): a seed must give the same run every time,
    and CI runs derandomized without one, as the project's tests do.
    """
    in_ci = bool(os.environ.get("CI"))
    example_database: ExampleDatabase | None = None
    if seed is None and not in_ci and database is not None:
        example_database = DirectoryBasedExampleDatabase(str(database))
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=example_database,
        derandomize=seed is None and in_ci,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )


def explore(
    impl: Adapter,
    oracle: Adapter,
    *,
    max_examples: int,
    seed: int | None,
    out_dir: Path | None,
    max_steps: int = DEFAULT_MAX_STEPS,
    progress: Callable[[int], None] | None = None,
    database: Path | None = DEFAULT_DATABASE,
    provenance_ref: str | None = None,
    workdir: Path | None = None,
) -> ExploreResult:
    """Explores up to ``max_examples`` random sequences on ``impl`` and ``oracle``.

    On the first difference the sequence is shrunk; the shrunk one is the result's
    ``finding`` and, with ``out_dir``, is written there as a case file. ``seed`` makes the
    run reproducible (and then no example database is read or written); without it the
    examples come from Hypothesis' database under ``database`` first, except when the
    environment variable CI is set, where no database is used and the run is
    derandomized. ``progress`` is called with the number of sequences run after each one.
    Each sequence's directories are made under ``workdir`` (default: ``scratch_root``).
    """
    if max_examples < 1:
        raise ExploreError(f"max_examples must be at least 1, not {max_examples}")
    impl_info, oracle_info = impl.info, oracle.info
    common = impl_info.capabilities & oracle_info.capabilities
    sequences = sequence_strategy(common, max_steps)
    images = explorer_images()
    run_settings = hypothesis_settings(max_examples, seed, database)
    count = 0
    repeats = 0
    agreed: set[str] = set()
    """Sequences both sides agreed on: Hypothesis may draw one again, the answers would not
    change, so it is not run twice."""
    smallest: Trace | None = None
    setup_failure: str | None = None
    started = time.perf_counter()
    root = workdir if workdir is not None else scratch_root(impl, oracle)
    workroot = Path(os.path.realpath(tempfile.mkdtemp(prefix="chainsuite-explore-", dir=root)))
    try:
        runner = PairRunner(impl, oracle, workroot)

        def run_one(steps: list[Step]) -> None:
            nonlocal count, repeats, smallest, setup_failure
            if setup_failure is not None:
                return  # the sides cannot begin a case: let Hypothesis finish without work
            key = json.dumps(steps, sort_keys=True)
            if key in agreed:
                repeats += 1
                return
            count += 1
            try:
                trace = runner.run(steps, images.place)
            except SetupFailed as error:
                setup_failure = str(error)
                return
            finally:
                if progress is not None:
                    progress(count)
            if trace.parting is None:
                agreed.add(key)
                return
            if smallest is None or len(trace.exchanges) <= len(smallest.exchanges):
                smallest = trace
            raise _Parted(trace)

        test = run_settings(given(sequences)(run_one))
        if seed is not None:
            test = hypothesis_seed(seed)(test)
        # As hypothesis.find does: one key per pair of sides, not one for every exploration.
        test._hypothesis_internal_database_key = _database_key(  # type: ignore[attr-defined]
            impl_info, oracle_info, max_steps
        )
        finding: Finding | None = None
        try:
            test()
        except _Parted as parted:
            finding = Finding.of(parted.trace)
        except (FlakyFailure, FlakyReplay):
            # The shrunk example did not fail again (a real implementation that is not
            # deterministic): the smallest difference seen is still a difference.
            if smallest is not None:
                finding = Finding.of(smallest)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    if setup_failure is not None:
        raise ExploreError(setup_failure)
    if finding is not None and out_dir is not None:
        ref = provenance_ref or _default_ref(impl_info, oracle_info, seed)
        path = write_finding(finding, impl_info, oracle_info, out_dir, ref)
        finding = replace(finding, case_path=path)
    return ExploreResult(
        count, time.perf_counter() - started, finding, tuple(runner.cleanup_problems), repeats
    )


def _default_ref(
    implementation: ImplementationInfo, oracle: ImplementationInfo, seed: int | None
) -> str:
    command = (
        f"chainsuite explore --impl {implementation.name}:{implementation.profile} "
        f"--oracle {oracle.name}:{oracle.profile}"
    )
    return command + (f" --seed {seed}" if seed is not None else "")


# -- replaying a case file -----------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """One case of a file, re-run on both sides."""

    case_id: str
    trace: Trace


def load_case_file(path: Path) -> list[Case]:
    """The cases of one case file (a found case or any other), validated."""
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise ExploreError(f"{path}: {error.strerror}") from None
    except ValueError as error:
        raise ExploreError(f"{path}: not JSON: {error}") from None
    try:
        return load_cases(document, str(path))
    except CatalogueError as error:
        raise ExploreError(str(error)) from None


def observed_oracle(path: Path) -> dict[str, Any] | None:
    """The oracle a found case records in its ``observed`` object, if any."""
    try:
        document = json.loads(path.read_text())
        oracle: dict[str, Any] = document["cases"][0]["observed"]["oracle"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return oracle


def replay(
    cases: Sequence[Case], impl: Adapter, oracle: Adapter, cache_root: Path | None = None
) -> list[Replay]:
    """Each case's steps run on both sides, every step compared (no step is added)."""
    common = impl.info.capabilities & oracle.info.capabilities
    for case in cases:
        missing = sorted(case.requires - common)
        if missing:
            raise ExploreError(
                f"case {case.id} needs {', '.join(missing)}, which one side does not offer"
            )
    cache = cache_root if cache_root is not None else default_cache_root()
    workroot = Path(os.path.realpath(tempfile.mkdtemp(prefix="chainsuite-replay-")))
    runner = PairRunner(impl, oracle, workroot)
    results = []
    try:
        for case in cases:

            def place(directory: Path, case: Case = case) -> None:
                try:
                    materialize(case, directory, cache)
                except Exception as error:
                    raise ExploreError(
                        f"case {case.id}: images could not be made: {error}"
                    ) from None

            try:
                trace = runner.run(case.steps, place, observe=False, stop_at_parting=False)
            except SetupFailed as error:
                raise ExploreError(str(error)) from None
            results.append(Replay(case.id, trace.neutral()))
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    return results


# -- describing steps and answers ----------------------------------------------------------


def describe_step(step: Step) -> str:
    """A step on one line: its operation, then its arguments as the case gives them."""
    parts = [step["op"]]
    for key, value in step.items():
        if key in ("op", "expect", "note"):
            continue
        if key == "disks":
            parts.append(" ".join(_describe_disk(disk) for disk in value) or "no disks")
        elif key == "disk":
            parts.append(_describe_disk(value))
        elif key in ("domain", "target"):
            parts.append(str(value))
        else:
            parts.append(f"{key}={_verbatim(value)}")
    return " ".join(parts)


def _describe_disk(disk: dict[str, Any]) -> str:
    source = _verbatim(disk["path"]) if disk.get("path") else "(empty)"
    text = f"{disk['target']}={source}"
    if disk.get("format"):
        text += f"({disk['format']})"
    if disk.get("device"):
        text += f"[{disk['device']}]"
    if disk.get("backing"):
        below = ",".join(_verbatim(item["path"]) for item in disk["backing"])
        text += f"<-{below}" + ("|" if disk.get("backing_terminated") else "")
    return text


def _verbatim(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _short(value: Any) -> str:
    """A file name of an answer: all are absolute, so ``$DIR/`` says nothing there."""
    return _verbatim(value).replace(f"{DIR_PLACEHOLDER}/", "")


def describe_answer(answer: Answer) -> str:
    """An answer on one line: rc, error code, and a chain's layers as name(format)#index."""
    if UNANSWERED in answer:
        return f"no answer ({answer[UNANSWERED]})"
    text = f"rc {answer.get('rc')}"
    error = answer.get("error")
    if error:
        text += f" {error.get('code')}"
    if "chain" in answer:
        chain = answer["chain"]
        if chain is None:
            text += ", chain none"
        else:
            layers = " <- ".join(
                f"{_short(layer.get('filename'))}({layer.get('format')})#{layer.get('index')}"
                for layer in chain
            )
            end = "" if answer.get("terminated", True) else " <- ?"
            text += f", chain {layers}{end}"
    return text
