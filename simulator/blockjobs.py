"""Block jobs as explicit states, and what a simulated qemu does to the files while they run.

A job starts RUNNING. ``step`` lets qemu finish its share of the work: a pull
or an intermediate commit is then COMPLETED, with the headers rewritten that
qemu rewrites; an active commit or a copy becomes READY and waits for a pivot
or an abort. Each state change queues an event; libvirt's reaction to the
event (its cache update) happens only when the event is delivered, so the
window between qemu's change and libvirt's knowledge of it can be explored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from simulator.model import Chain


class JobKind(StrEnum):
    PULL = "pull"
    COMMIT = "commit"
    ACTIVE_COMMIT = "active-commit"
    COPY = "copy"


class JobState(StrEnum):
    RUNNING = "running"
    READY = "ready"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class EventType(StrEnum):
    """libvirt's VIR_DOMAIN_BLOCK_JOB_* event statuses."""

    READY = "ready"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass
class BlockJob:
    """One job on one disk. Paths are the files as the cached chain names them."""

    id: int
    kind: JobKind
    domain: str
    target: str
    top: str
    """The image the job starts from: the active layer, or the commit's top."""
    base: str | None = None
    """The image the job ends at: the pull's or commit's base; None for a full pull."""
    destination: str | None = None
    """A copy's destination file."""
    shallow: bool = False
    reuse: bool = False
    delete: bool = False
    state: JobState = JobState.RUNNING
    pivot: bool = False
    """An active commit or copy that finishes by switching the disk to the new image."""
    removed: tuple[str, ...] = ()
    """Images the job takes out of the chain."""
    parent: str | None = None
    """The image above a commit's top: qemu rewrites its backing to ``base``."""
    base_format: str | None = None
    """``base``'s format, which qemu records in the header it rewrites."""
    mirror_index: int = 0
    """The index a copy's destination was given when the copy started."""
    mirror_chain: Chain | None = None
    """A reused shallow destination's chain, detected when the copy started."""


@dataclass(frozen=True)
class JobEvent:
    """An event qemu raised that libvirt has not handled yet."""

    id: int
    job: int
    domain: str
    target: str
    kind: JobKind
    type: EventType


@dataclass
class EventQueue:
    """Events in the order qemu raised them; a caller delivers them in any order."""

    pending: list[JobEvent] = field(default_factory=list)
    _next_id: int = 1

    def raise_event(self, job: BlockJob, type: EventType) -> JobEvent:
        event = JobEvent(self._next_id, job.id, job.domain, job.target, job.kind, type)
        self._next_id += 1
        self.pending.append(event)
        return event

    def take(self, event_id: int) -> JobEvent:
        for index, event in enumerate(self.pending):
            if event.id == event_id:
                return self.pending.pop(index)
        raise KeyError(event_id)

    def drop_domain(self, domain: str) -> None:
        self.pending = [event for event in self.pending if event.domain != domain]
