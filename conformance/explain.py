"""``chainsuite explain``: the seed's edge cases, run side by side under each profile's rules.

Each edge case is data: a chain of images (a ``ChainSpec``) and a short script of
operations on the simulated hypervisor. The script runs once per profile on real
images built natively in a temporary directory, and every step records what the
call returned, which ``qemuDomainDetermineDiskChain`` calls it made, how many
probes it cost, what the cache holds afterwards and what a fresh read of the
files would find. The line saying what the user sees is a template filled from
those facts; nothing about an outcome is written down in advance.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from images.build import BuildError, BuildMethod, build
from images.spec import ChainSpec, LayerSpec
from simulator.blockjobs import EventType, JobEvent, JobKind
from simulator.hypervisor import DiskConfig, Domain, Hypervisor, LiveDisk, Outcome
from simulator.model import Chain, ChainError
from simulator.profiles import PROFILES, Profile

DEFAULT_PROFILES = ("seed-v2", "libvirt-1.0")
"""The two 2012 versions of the cache: the patch as posted and as it landed."""
PROFILES_WITH_A_CACHE = ("seed-v2", "libvirt-1.0", "libvirt-modern")
"""The qemu profile only probes: it has no running guest whose chain could be cached."""
GUEST = "guest"
SCRATCH_PREFIX = "chainsuite-explain-"


class ExplainError(Exception):
    """A request the command cannot serve; the message is the one line it prints."""


# -- the edge cases, as data ------------------------------------------------------------


class Op(StrEnum):
    """What a step does; each maps to one Hypervisor call (or a fixed pair of them)."""

    START = "start"
    """Define the guest with ``image`` as vda (again, if defined) and start it."""
    STOP = "stop"
    DAEMON_RESTART = "daemon-restart"
    DELETE = "delete"
    """``image`` is deleted behind libvirt's back."""
    RESTORE = "restore"
    """``image`` is written again, as a copy of ``source``, behind libvirt's back."""
    REBASE = "rebase"
    """``image``'s header is changed to name ``base`` as its backing."""
    ATTACH = "attach"
    SNAPSHOT = "snapshot"
    BLOCK_PULL = "block-pull"
    BLOCK_COMMIT = "block-commit"
    QEMU_FINISHES = "qemu-finishes"
    """qemu finishes the disk's block job; libvirt has not handled the event yet."""
    JOB_COMPLETE = "job-complete"
    """qemu finishes the disk's block job and libvirt handles every pending event."""
    DETERMINE = "determine"
    """qemuDomainDetermineDiskChain called directly, with ``force``."""


@dataclass(frozen=True)
class Step:
    """One operation. Image names are relative to the chain's directory."""

    op: Op
    target: str = "vda"
    image: str | None = None
    base: str | None = None
    top: str | None = None
    source: str | None = None
    force: bool = False
    note: str = ""
    """Why the step is there (not what it does: that is measured)."""


@dataclass(frozen=True)
class EdgeCase:
    name: str
    summary: str
    origin: str
    """The words of the seed or its review that raise the case."""
    chain: ChainSpec
    steps: tuple[Step, ...]


def _qcow2(name: str, backing: str | None = None, *, missing: bool = False) -> LayerSpec:
    # qcow2 version 2: libvirt 1.0 reads a v3 header's backing format at the wrong offset.
    return LayerSpec(
        name,
        "qcow2",
        backing,
        "qcow2" if backing else None,
        compat="0.10",
        missing=missing,
    )


TWO_LAYERS = ChainSpec("explain-two", (_qcow2("top.qcow2", "base.qcow2"), _qcow2("base.qcow2")))
THREE_LAYERS = ChainSpec(
    "explain-three",
    (_qcow2("top.qcow2", "mid.qcow2"), _qcow2("mid.qcow2", "base.qcow2"), _qcow2("base.qcow2")),
)
THREE_LAYERS_AND_A_SPARE = ChainSpec(
    "explain-three-spare", (*THREE_LAYERS.layers, _qcow2("spare/base.qcow2"))
)
TWO_LAYERS_AND_A_BROKEN_DISK = ChainSpec(
    "explain-two-broken",
    (
        *TWO_LAYERS.layers,
        _qcow2("data.qcow2", "gone.qcow2"),
        _qcow2("gone.qcow2", missing=True),
    ),
)

START = Step(Op.START, image="top.qcow2")

EDGE_CASES: tuple[EdgeCase, ...] = (
    EdgeCase(
        "forced-reprobe",
        "a pull completes after its base was deleted; the forced re-probe fails; "
        "the next caller needs the chain",
        "review: 'if force was true, you would want to return failure if you couldn't get "
        "the chain, you're returning failure only if force is false'",
        THREE_LAYERS,
        (
            START,
            Step(Op.BLOCK_PULL, base="base.qcow2"),
            Step(Op.DELETE, image="base.qcow2"),
            Step(Op.JOB_COMPLETE, note="the only forced caller: the block-job event handler"),
            Step(Op.BLOCK_COMMIT, top="mid.qcow2", note="the next caller that needs the chain"),
        ),
    ),
    EdgeCase(
        "cached-not-forced",
        "a chain is cached and its base deleted: not forced, then forced, then not forced",
        "seed: 'if (disk->chain) { if (force) { ...free...; } else { return 0; } }'",
        TWO_LAYERS,
        (
            START,
            Step(Op.DELETE, image="base.qcow2"),
            Step(Op.DETERMINE, force=False),
            Step(Op.DETERMINE, force=True),
            Step(Op.DETERMINE, force=False),
        ),
    ),
    EdgeCase(
        "empty-cache-probe-fails",
        "nothing is cached (libvirtd restarted) and the probe fails: not forced, then forced",
        "seed: 'if (!disk->chain && !force) return -1; return 0;'",
        TWO_LAYERS,
        (
            START,
            Step(Op.DAEMON_RESTART),
            Step(Op.DELETE, image="base.qcow2"),
            Step(Op.DETERMINE, force=False),
            Step(Op.DETERMINE, force=True),
        ),
    ),
    EdgeCase(
        "hotplug-probe-fails",
        "attach-disk of an image whose backing file is missing: a caller that does not force",
        "review, on qemuDomainAttachDeviceDiskLive: 'here you have force = false, and expect "
        "that it might fail'",
        TWO_LAYERS_AND_A_BROKEN_DISK,
        (START, Step(Op.ATTACH, target="vdb", image="data.qcow2")),
    ),
    EdgeCase(
        "pull-completion",
        "a block pull completes with every file in place; the next caller needs the chain",
        "seed: 'If we completed a block pull, then recompute the cached backing chain to match'",
        THREE_LAYERS,
        (
            START,
            Step(Op.BLOCK_PULL, base="base.qcow2"),
            Step(Op.JOB_COMPLETE),
            Step(Op.BLOCK_PULL, note="the next caller that needs the chain"),
        ),
    ),
    EdgeCase(
        "commit-completion",
        "a block commit completes; the next caller names the layer it committed",
        "seed: 'we merely invalidate the cache any time we do a live operation that alters "
        "the chain (block-pull, block-commit, external disk snapshot)'",
        THREE_LAYERS,
        (
            START,
            Step(Op.BLOCK_COMMIT, top="mid.qcow2", base="base.qcow2"),
            Step(Op.JOB_COMPLETE),
            Step(
                Op.BLOCK_PULL,
                base="mid.qcow2",
                note="the next caller: mid.qcow2 was committed and is no longer in the chain",
            ),
        ),
    ),
    EdgeCase(
        "snapshot",
        "an external disk-only snapshot; the next caller needs the chain",
        "review, on 'nuke the existing chain so that future commands will recompute it': "
        "'So are you avoiding this for now just to reduce the complexity of this series?'",
        TWO_LAYERS,
        (
            START,
            Step(Op.SNAPSHOT, image="snap.qcow2"),
            Step(
                Op.BLOCK_COMMIT,
                top="top.qcow2",
                base="base.qcow2",
                note="the next caller that needs the chain",
            ),
        ),
    ),
    EdgeCase(
        "daemon-restart",
        "libvirtd restarts after qemu finished a pull; the next caller needs the chain",
        "review: 'cache it in the domain's status for as long as the domain is running (this "
        "would alleviate the need to recompute it when libvirtd is restarted)'",
        THREE_LAYERS,
        (
            START,
            Step(Op.BLOCK_PULL, base="base.qcow2"),
            Step(Op.QEMU_FINISHES),
            Step(Op.DAEMON_RESTART),
            Step(Op.BLOCK_PULL, note="the next caller that needs the chain"),
        ),
    ),
    EdgeCase(
        "stop-start",
        "the guest stops, its chain changes while it is off, and it starts again",
        "review, on PATCHv2's loop in qemuProcessStop: 'shouldn't this be taken care of "
        "automatically?'",
        THREE_LAYERS,
        (
            START,
            Step(Op.STOP),
            Step(Op.REBASE, image="top.qcow2", base="base.qcow2"),
            START,
        ),
    ),
    EdgeCase(
        "base-comes-back",
        "the forced re-probe fails, then the deleted base comes back; the next caller",
        "seed: 'if (!disk->chain && !force) return -1;' leaves disk->chain NULL either way",
        THREE_LAYERS_AND_A_SPARE,
        (
            START,
            Step(Op.BLOCK_PULL, base="base.qcow2"),
            Step(Op.DELETE, image="base.qcow2"),
            Step(Op.JOB_COMPLETE),
            Step(Op.RESTORE, image="base.qcow2", source="spare/base.qcow2"),
            Step(Op.BLOCK_PULL, note="the next caller that needs the chain"),
        ),
    ),
)
EDGE_CASES_BY_NAME = {case.name: case for case in EDGE_CASES}


# -- running them -----------------------------------------------------------------------


@dataclass(frozen=True)
class CallResult:
    """An ``Outcome`` with the chain directory taken out of its message."""

    rc: int
    code: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        error = None if self.code is None else {"code": self.code, "message": self.message}
        return {"rc": self.rc, "error": error}


@dataclass(frozen=True)
class ChainCall:
    """One call of qemuDomainDetermineDiskChain made during a step."""

    target: str
    force: bool
    result: CallResult

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "force": self.force, **self.result.to_json()}


class DiskState(StrEnum):
    LIVE = "live"
    NOT_ATTACHED = "not-attached"
    GUEST_NOT_RUNNING = "guest-not-running"


@dataclass(frozen=True)
class StepResult:
    """What one step did under one profile."""

    result: CallResult
    chain_calls: tuple[ChainCall, ...]
    probes: int
    stale_reads: int
    """Operations that read a cached chain that no longer matched the files."""
    disk: DiskState
    cache: tuple[str, ...] | None
    """The cached chain of the step's disk afterwards, top first; None: nothing cached."""
    files: tuple[str, ...] | str | None
    """What reading the files would find now: a chain, an error code, or None (no disk)."""
    events: tuple[str, ...]
    """Completion events libvirt handled during the step ("pull completed", ...)."""
    lost_events: int
    user_sees: str

    @property
    def cache_matches_files(self) -> bool | None:
        return None if self.cache is None else self.cache == self.files

    def to_json(self) -> dict[str, Any]:
        files: Any = self.files
        if isinstance(self.files, str):
            files = {"error": self.files}
        elif self.files is not None:
            files = list(self.files)
        return {
            **self.result.to_json(),
            "determine_disk_chain": [call.to_json() for call in self.chain_calls],
            "probes": self.probes,
            "stale_reads": self.stale_reads,
            "disk": self.disk.value,
            "cache": None if self.cache is None else list(self.cache),
            "files": files,
            "cache_matches_files": self.cache_matches_files,
            "events": list(self.events),
            "lost_events": self.lost_events,
            "user_sees": self.user_sees,
        }


@dataclass(frozen=True)
class StepExplanation:
    number: int
    step: Step
    action: str
    results: dict[str, StepResult]

    @property
    def profiles_agree(self) -> bool:
        first, *others = self.results.values()
        return all(other == first for other in others)

    @property
    def users_see_the_same(self) -> bool:
        return len({result.user_sees for result in self.results.values()}) == 1

    def differences(self) -> list[str]:
        """Which facts differ between the profiles, named as the text output names them."""
        results = list(self.results.values())
        facts: dict[str, Callable[[StepResult], Hashable]] = {
            "the return code": lambda r: (r.result.rc, r.result.code),
            "what qemuDomainDetermineDiskChain returns": lambda r: tuple(
                (call.force, call.result.rc) for call in r.chain_calls
            ),
            "the probes": lambda r: r.probes,
            "the cache": lambda r: (r.cache, r.cache_matches_files),
            "what the user sees": lambda r: r.user_sees,
        }
        return [name for name, fact in facts.items() if len({fact(r) for r in results}) > 1]

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "op": self.step.op.value,
            "action": self.action,
            "note": self.step.note or None,
            "profiles_agree": self.profiles_agree,
            "differences": self.differences(),
            "results": {name: result.to_json() for name, result in self.results.items()},
        }


@dataclass(frozen=True)
class Explanation:
    case: EdgeCase
    profiles: tuple[str, ...]
    steps: tuple[StepExplanation, ...]

    def step(self, number: int) -> StepExplanation:
        return self.steps[number - 1]

    def differing_steps(self) -> list[int]:
        return [step.number for step in self.steps if not step.profiles_agree]

    def verdict(self) -> str:
        """One sentence on where the profiles part, derived from the steps."""
        names = _joined(list(self.profiles))
        differing = [step for step in self.steps if not step.profiles_agree]
        if len(self.profiles) == 1:
            return f"Only {names} was run."
        if not differing:
            return f"{names} agree on every step."
        parts = [f"step {step.number} ({', '.join(step.differences())})" for step in differing]
        sentence = f"{names} differ at {_joined(parts)}"
        if all(step.users_see_the_same for step in differing):
            return sentence + "; the user sees the same at every step."
        return sentence + "."

    def to_json(self) -> dict[str, Any]:
        return {
            "edge_case": self.case.name,
            "summary": self.case.summary,
            "origin": self.case.origin,
            "images": _spec_lines(self.case.chain),
            "profiles": list(self.profiles),
            "steps": [step.to_json() for step in self.steps],
            "differing_steps": self.differing_steps(),
            "verdict": self.verdict(),
        }


def parse_profiles(text: str) -> tuple[str, ...]:
    """``seed-v2,libvirt-1.0`` → the names, checked; ExplainError names what is wrong."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ExplainError("no profile given (e.g. --profiles seed-v2,libvirt-1.0)")
    known = ", ".join(PROFILES_WITH_A_CACHE)
    for name in names:
        if name not in PROFILES:
            raise ExplainError(f"unknown profile '{name}' (known: {known})")
        if name not in PROFILES_WITH_A_CACHE:
            raise ExplainError(f"profile '{name}' has no cache to explain (use one of: {known})")
    if len(set(names)) != len(names):
        raise ExplainError(f"a profile is named twice in '{text}'")
    return names


def edge_case(name: str) -> EdgeCase:
    try:
        return EDGE_CASES_BY_NAME[name]
    except KeyError:
        known = ", ".join(EDGE_CASES_BY_NAME)
        raise ExplainError(f"unknown edge case '{name}' (known: {known})") from None


def explain(
    case: EdgeCase, profiles: tuple[str, ...], scratch_parent: Path | None = None
) -> Explanation:
    """Runs ``case`` under each profile on its own fresh copy of the images, then removes them."""
    runs: dict[str, list[StepResult]] = {}
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=scratch_parent) as scratch:
        for name in profiles:
            directory = Path(scratch).resolve() / name
            build(case.chain, directory, BuildMethod.NATIVE)
            runs[name] = _Script(PROFILES[name], directory).run(case.steps)
    steps = tuple(
        StepExplanation(
            position + 1, step, _action(step), {name: runs[name][position] for name in profiles}
        )
        for position, step in enumerate(case.steps)
    )
    return Explanation(case, profiles, steps)


class _RecordingHypervisor(Hypervisor):
    """The simulated hypervisor, noting every qemuDomainDetermineDiskChain call it makes
    and every job event it handles (a restart may replay events as well as lose them)."""

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self.chain_calls: list[tuple[str, bool, Outcome]] = []
        self.handled: list[JobEvent] = []

    def deliver(self, event_id: int) -> Outcome:
        event = next((event for event in self.events.pending if event.id == event_id), None)
        outcome = super().deliver(event_id)
        if outcome.ok and event is not None:
            self.handled.append(event)
        return outcome

    def determine_disk_chain(self, domain: Domain, disk: LiveDisk, force: bool) -> Outcome:
        outcome = super().determine_disk_chain(domain, disk, force)
        self.chain_calls.append((disk.config.target, force, outcome))
        return outcome


@dataclass
class _Before:
    """What the user-facing line compares a step's result with."""

    cache: tuple[str, ...] | None
    pending_events: int
    job: JobKind | None


@dataclass
class _Script:
    profile: Profile
    directory: Path
    hv: _RecordingHypervisor = field(init=False)

    def __post_init__(self) -> None:
        self.hv = _RecordingHypervisor(self.profile)

    def run(self, steps: tuple[Step, ...]) -> list[StepResult]:
        return [self.run_step(step) for step in steps]

    def path(self, name: str | None) -> str | None:
        return None if name is None else str(self.directory / name)

    def run_step(self, step: Step) -> StepResult:
        hv = self.hv
        before = _Before(self.cache(step.target), len(hv.events.pending), self.job_kind(step))
        calls_before = len(hv.chain_calls)
        handled_before = len(hv.handled)
        probes_before = hv.counters.probes
        stale_before = hv.counters.stale_operations
        outcome = self.perform(step)
        handled = hv.handled[handled_before:]
        events = tuple(f"{event.kind.value} {event.type.value}" for event in handled)
        # Only a restart drops events; it raises none, so what left the queue unhandled is lost.
        lost = before.pending_events - len(hv.events.pending) - len(handled)
        disk_state, cache, files = self.observe(step.target)
        calls = tuple(
            ChainCall(target, force, self.relative_result(result))
            for target, force, result in hv.chain_calls[calls_before:]
        )
        partial = StepResult(
            result=self.relative_result(outcome),
            chain_calls=calls,
            probes=hv.counters.probes - probes_before,
            stale_reads=hv.counters.stale_operations - stale_before,
            disk=disk_state,
            cache=cache,
            files=files,
            events=events,
            lost_events=lost if step.op is Op.DAEMON_RESTART else 0,
            user_sees="",
        )
        return replace(partial, user_sees=_user_sees(step, partial, before))

    def perform(self, step: Step) -> Outcome:
        hv, op, target = self.hv, step.op, step.target
        if op is Op.START:
            disks = [DiskConfig(target, self.path(step.image), "qcow2")]
            defined = hv.define(GUEST, disks)
            return hv.start(GUEST) if defined.ok else defined
        if op is Op.STOP:
            return hv.destroy(GUEST)
        if op is Op.DAEMON_RESTART:
            return hv.daemon_restart()
        if op is Op.DELETE:
            return hv.delete_file(self.required(step.image))
        if op is Op.RESTORE:
            content = Path(self.required(step.source)).read_bytes()
            return hv.replace_file(self.required(step.image), content)
        if op is Op.REBASE:
            return hv.rewrite_header(self.required(step.image), self.path(step.base), "qcow2")
        if op is Op.ATTACH:
            return hv.attach(GUEST, DiskConfig(target, self.path(step.image), "qcow2"))
        if op is Op.SNAPSHOT:
            return hv.snapshot(GUEST, target, self.required(step.image))
        if op is Op.BLOCK_PULL:
            return hv.block_pull(GUEST, target, base=self.path(step.base))
        if op is Op.BLOCK_COMMIT:
            return hv.block_commit(GUEST, target, self.path(step.top), self.path(step.base))
        if op is Op.QEMU_FINISHES:
            return hv.job_step(GUEST, target)
        if op is Op.JOB_COMPLETE:
            finished = hv.job_step(GUEST, target)
            if not finished.ok:
                return finished
            for event in [event for event in hv.events.pending if event.domain == GUEST]:
                hv.deliver(event.id)
            return finished
        assert op is Op.DETERMINE
        domain = hv.domains.get(GUEST)
        disk = domain.live_disk(target) if domain is not None else None
        if domain is None or disk is None:
            return Outcome(-1, "no-such-disk", f"no running disk '{target}'")
        return hv.determine_disk_chain(domain, disk, step.force)

    def required(self, name: str | None) -> str:
        path = self.path(name)
        assert path is not None, "the edge case names no image for this step"
        return path

    def job_kind(self, step: Step) -> JobKind | None:
        domain = self.hv.domains.get(GUEST)
        disk = domain.live_disk(step.target) if domain is not None else None
        job = self.hv.jobs.get(disk.job) if disk is not None and disk.job is not None else None
        return job.kind if job is not None else None

    def cache(self, target: str) -> tuple[str, ...] | None:
        chain = self.hv.chain(GUEST, target)
        return None if chain is None else self.names(chain)

    def observe(
        self, target: str
    ) -> tuple[DiskState, tuple[str, ...] | None, tuple[str, ...] | str | None]:
        """The disk's state, its cached chain, and what reading the files finds (uncounted)."""
        domain = self.hv.domains.get(GUEST)
        if domain is None or not domain.running:
            return DiskState.GUEST_NOT_RUNNING, None, None
        disk = domain.live_disk(target)
        if disk is None:
            return DiskState.NOT_ATTACHED, None, None
        fresh = self.hv.fresh_chain(disk.config)
        files = fresh.code.value if isinstance(fresh, ChainError) else self.names(fresh)
        return DiskState.LIVE, self.cache(target), files

    def names(self, chain: Chain) -> tuple[str, ...]:
        return tuple(self.relative(layer.filename) for layer in chain.layers)

    def relative(self, text: str) -> str:
        return text.replace(f"{self.directory}{os.sep}", "")

    def relative_result(self, outcome: Outcome) -> CallResult:
        message = None if outcome.message is None else self.relative(outcome.message)
        return CallResult(outcome.rc, None if outcome.code is None else str(outcome.code), message)


# -- words ------------------------------------------------------------------------------


def _action(step: Step) -> str:
    """What the step does, as a command or an event; never what came of it."""
    on = f"guest {step.target}"
    match step.op:
        case Op.START:
            return f"virsh start {GUEST}  ({step.target}: {step.image})"
        case Op.STOP:
            return f"virsh destroy {GUEST}"
        case Op.DAEMON_RESTART:
            return "libvirtd restarts"
        case Op.DELETE:
            return f"{step.image} is deleted behind libvirt's back"
        case Op.RESTORE:
            return f"{step.image} is put back (a copy of {step.source}) behind libvirt's back"
        case Op.REBASE:
            return f"{step.image} is rebased onto {step.base} (as qemu-img rebase -u does)"
        case Op.ATTACH:
            return f"virsh attach-disk {GUEST} {step.image} {step.target} --subdriver qcow2"
        case Op.SNAPSHOT:
            return (
                f"virsh snapshot-create-as {GUEST} --disk-only "
                f"--diskspec {step.target},file={step.image}"
            )
        case Op.BLOCK_PULL:
            return f"virsh blockpull {on}" + (f" --base {step.base}" if step.base else "")
        case Op.BLOCK_COMMIT:
            return f"virsh blockcommit {on}" + "".join(
                f" --{flag} {name}"
                for flag, name in (("top", step.top), ("base", step.base))
                if name
            )
        case Op.QEMU_FINISHES:
            return "qemu finishes the block job; libvirt has not handled its event"
        case Op.JOB_COMPLETE:
            return (
                "qemu finishes the block job; libvirt handles the event (qemuProcessHandleBlockJob)"
            )
        case Op.DETERMINE:
            force = "true" if step.force else "false"
            return f"qemuDomainDetermineDiskChain({step.target}, force={force}), called directly"
    raise AssertionError(step.op)


def _chain_text(names: tuple[str, ...] | None) -> str:
    return "nothing" if names is None else " → ".join(names)


def _failure(result: CallResult) -> str:
    return f"{result.code}: {result.message}"


def _user_sees(step: Step, result: StepResult, before: _Before) -> str:
    """The plain-language consequence of a step, filled in from what the step did."""
    outcome = result.result
    match step.op:
        case Op.START:
            if outcome.rc != 0:
                return f"virsh start fails: {_failure(outcome)}"
            read = f", after reading {_chain_text(result.cache)} from the files"
            return "the guest starts" + (read if result.probes else "")
        case Op.STOP:
            held = "libvirt holds no chain any more" if result.cache is None else "a chain is kept"
            return f"the guest stops; {held}"
        case Op.DAEMON_RESTART:
            words = ["libvirtd restarts; the guest keeps running"]
            if before.cache is not None and result.cache is None:
                words.append("the cached chain is gone")
            elif before.cache is not None:
                words.append("the chain survives in the status XML")
            if result.events:
                words.append(f"it handles the pending events ({', '.join(result.events)})")
            if result.lost_events == 1:
                words.append("the event of the job that qemu finished is lost")
            elif result.lost_events:
                words.append(f"the events of {result.lost_events} finished jobs are lost")
            return "; ".join(words)
        case Op.DELETE | Op.RESTORE | Op.REBASE:
            if outcome.rc != 0:
                return f"the change is refused: {_failure(outcome)}"
            if result.cache is None:
                return "nothing: libvirt is not told, and holds no chain that could now be wrong"
            if result.cache_matches_files:
                return "nothing: libvirt is not told; its cached chain still matches the files"
            return "nothing: libvirt is not told, and its cached chain no longer matches the files"
        case Op.ATTACH:
            if outcome.rc != 0:
                attached = (
                    "the disk is not attached"
                    if result.disk is DiskState.NOT_ATTACHED
                    else "yet the disk is attached"
                )
                return f"virsh attach-disk fails: {_failure(outcome)}; {attached}"
            return f"virsh attach-disk succeeds; libvirt caches {_chain_text(result.cache)}"
        case Op.SNAPSHOT:
            if outcome.rc != 0:
                return f"the snapshot fails: {_failure(outcome)}"
            if before.cache is not None and result.cache is None:
                return "the snapshot succeeds; libvirt drops its cached chain"
            how = "without reading the files" if result.probes == 0 else "after reading the files"
            return f"the snapshot succeeds; libvirt caches {_chain_text(result.cache)} {how}"
        case Op.BLOCK_PULL | Op.BLOCK_COMMIT:
            command = "virsh blockpull" if step.op is Op.BLOCK_PULL else "virsh blockcommit"
            if result.probes:
                read = "after reading the chain from the files"
            elif result.stale_reads:
                read = "checked against the cached chain, which no longer matches the files"
            else:
                read = "checked against the cached chain, without reading the files"
            if outcome.rc != 0:
                return f"{command} fails ({read}): {_failure(outcome)}"
            return f"{command} starts the job, {read}"
        case Op.QEMU_FINISHES:
            if outcome.rc != 0:
                return f"nothing happens: {_failure(outcome)}"
            return "nothing yet: the job's end waits for libvirt to handle its event"
        case Op.JOB_COMPLETE:
            return _job_completion_seen(outcome, result, before)
        case Op.DETERMINE:
            # Who calls with which force is the seed's own code, not an outcome.
            caller = (
                "the forced caller (the block-job event handler)"
                if step.force
                else "a caller that needs the chain (attach-disk, a block job)"
            )
            return f"{caller} {_caller_goes_on(result)}"
    raise AssertionError(step.op)


def _job_completion_seen(outcome: CallResult, result: StepResult, before: _Before) -> str:
    command = {JobKind.PULL: "virsh blockpull --wait", JobKind.COMMIT: "virsh blockcommit --wait"}
    waiting = command.get(before.job, "virsh blockjob") if before.job else "virsh blockjob"
    if outcome.rc != 0:
        return f"{waiting} has nothing to wait for: {_failure(outcome)}"
    completed = any(event.endswith(EventType.COMPLETED.value) for event in result.events)
    said = f"{waiting} reports success" if completed else f"{waiting} reports that the job failed"
    forced = [call for call in result.chain_calls if call.force]
    if any(call.result.code is not None for call in forced):
        return f"{said} although the chain could not be read; libvirt now holds no chain"
    if forced:
        return f"{said}; libvirt read the new chain, {_chain_text(result.cache)}, from the files"
    if result.cache is None:
        return f"{said}; libvirt holds no chain"
    chain = _chain_text(result.cache)
    if result.cache == before.cache:
        kept = f"libvirt keeps the chain from before the job, {chain}"
    else:
        kept = f"libvirt updates its chain to {chain} without reading the files"
    if result.cache_matches_files:
        return f"{said}; {kept}"
    return f"{said}, but {kept}, which does not match the files"


def _caller_goes_on(result: StepResult) -> str:
    outcome = result.result
    if outcome.rc != 0:
        return f"is refused: {_failure(outcome)}"
    if result.cache is None and outcome.code is not None:
        return f"is told success although {outcome.code} was reported and nothing is cached"
    if result.cache is None:
        return "goes on with no chain known"
    if result.probes == 0 and not result.cache_matches_files:
        return "goes on with the cached chain unread, though it no longer matches the files"
    if result.probes == 0:
        return "goes on with the cached chain, without reading the files"
    return f"goes on with {_chain_text(result.cache)}, read from the files"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _joined(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _spec_lines(spec: ChainSpec) -> list[str]:
    """Each chain of the spec top first, plus images that are no one's backing."""
    layers = {layer.name: layer for layer in spec.layers}
    backed = {layer.backing for layer in spec.layers if layer.backing}
    lines = []
    for layer in spec.layers:
        if layer.name in backed:
            continue
        names: list[str] = []
        seen: set[str] = set()
        current: LayerSpec | None = layer
        while current is not None and current.name not in seen:
            seen.add(current.name)
            names.append(current.name + (" (missing)" if current.missing else ""))
            current = layers.get(current.backing) if current.backing else None
        lines.append(" → ".join(names))
    return lines


# -- output -----------------------------------------------------------------------------


def listing() -> list[dict[str, str]]:
    return [{"name": case.name, "summary": case.summary} for case in EDGE_CASES]


def render_listing() -> str:
    width = max(len(case.name) for case in EDGE_CASES)
    lines = [f"{case.name:<{width}}  {case.summary}" for case in EDGE_CASES]
    lines.append("")
    lines.append("chainsuite explain EDGE-CASE [--profiles seed-v2,libvirt-1.0] [--output json]")
    return "\n".join(lines) + "\n"


def render_text(explanation: Explanation) -> str:
    case = explanation.case
    profiles = explanation.profiles
    everyone = "both" if len(profiles) == 2 else "all"
    lines = [
        f"{case.name}: {case.summary}",
        f"  {case.origin}",
        "  images (qcow2 v2, built in a temporary directory, one copy per profile): "
        + "; ".join(_spec_lines(case.chain)),
        f"  profiles: {', '.join(profiles)}",
        "",
    ]
    for step in explanation.steps:
        lines.append(f"{step.number}. {step.action}")
        if step.step.note:
            lines.append(f"   ({step.step.note})")
        # A direct call is its own DetermineDiskChain call: listing it twice says nothing.
        calls = step.step.op is not Op.DETERMINE
        facts = _grouped({name: _facts(r, calls) for name, r in step.results.items()})
        if len(facts) == 1 and len(profiles) > 1:
            lines.append(f"   {everyone} agree: {facts[0][1]}")
        else:
            width = max(len(names) for names, _ in facts)
            lines.extend(f"   {names:<{width}}  {text}" for names, text in facts)
        seen = _grouped({name: result.user_sees for name, result in step.results.items()})
        if len(seen) == 1:
            lines.append(f"   user sees: {seen[0][1]}")
        else:
            lines.extend(f"   user sees ({names}): {text}" for names, text in seen)
        lines.append("")
    lines.append(explanation.verdict())
    lines.append(LEGEND)
    return "\n".join(lines) + "\n"


LEGEND = (
    "(DetermineDiskChain(DISK, force) → RC [CODE]: a qemuDomainDetermineDiskChain call made "
    "during the step; a code after 0 is an error reported but not returned.)"
)


def _grouped(texts: dict[str, str]) -> list[tuple[str, str]]:
    """Profiles that say the same thing, together: [("seed-v2, libvirt-1.0", text), ...]."""
    groups: dict[str, list[str]] = {}
    for name, text in texts.items():
        groups.setdefault(text, []).append(name)
    return [(", ".join(names), text) for text, names in groups.items()]


def _facts(result: StepResult, show_calls: bool) -> str:
    outcome = result.result
    returns = f"returns {outcome.rc}"
    if outcome.code is not None:
        returns += f" [{outcome.code}]"
    parts = [returns]
    for call in result.chain_calls if show_calls else ():
        force = "true" if call.force else "false"
        said = f"DetermineDiskChain({call.target}, force={force}) → {call.result.rc}"
        if call.result.code is not None:
            said += f" [{call.result.code}]"
        parts.append(said)
    parts.append(_count(result.probes, "probe"))
    parts.append(f"cache: {_cache_text(result)}")
    return " · ".join(parts)


def _cache_text(result: StepResult) -> str:
    if result.disk is DiskState.GUEST_NOT_RUNNING:
        return "nothing (the guest is not running)"
    if result.disk is DiskState.NOT_ATTACHED:
        return "nothing (no such disk)"
    text = _chain_text(result.cache)
    if result.cache is not None and not result.cache_matches_files:
        files = result.files
        now = files if isinstance(files, str) else _chain_text(files)
        text += f" (stale: the files now give {now})"
    return text


def run_explain(name: str | None, profiles_text: str, output: str) -> int:
    """The subcommand: 0 with an explanation or the list, 2 on a bad request, 1 if it broke."""
    # Image names may hold bytes that are not text: print them escaped rather than fail.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    if name is None:
        if output == "json":
            sys.stdout.write(json.dumps(listing(), indent=2) + "\n")
        else:
            sys.stdout.write(render_listing())
        return 0
    try:
        case = edge_case(name)
        profiles = parse_profiles(profiles_text)
    except ExplainError as error:
        print(f"explain: {error}", file=sys.stderr)
        return 2
    try:
        explanation = explain(case, profiles)
    except (BuildError, OSError) as error:
        print(f"explain: cannot build the images for '{name}': {error}", file=sys.stderr)
        return 1
    if output == "json":
        sys.stdout.write(json.dumps(explanation.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_text(explanation))
    return 0
