"""The simulated hypervisor: domains, disks and their cached chains, under a profile's rules.

It mirrors the parts of libvirt's qemu driver that touch a disk's backing
chain: ``qemuDomainDetermineDiskChain`` and its callers (start, hotplug,
media change, block copy), the snapshot and block-job code that drops,
re-probes or rewrites the cache, and a simulated qemu that writes the files
it would write. Every operation returns an ``Outcome`` (libvirt's 0 / -1 and
the error), never raises for a refused request.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from simulator import backing as backing_names
from simulator.blockjobs import BlockJob, EventQueue, EventType, JobEvent, JobKind, JobState
from simulator.formats import qcow2
from simulator.formats.header import Header, HeaderRejected, decode_c_name
from simulator.formats.names import LIBVIRT_BACKING_FORMATS, LIBVIRT_FORMAT_NAMES
from simulator.model import Chain, ChainError, ErrorCode, Layer, LayerType
from simulator.prober import Prober
from simulator.profiles import LIBVIRT_MAX_HEADER, IndexRule, Profile, SnapshotRule
from simulator.storage import Content, FileKind, ImageFile, LocalStorage, Storage
from simulator.values import evolve

DEFAULT_SIZE = 1 << 20
QEMU_CHAIN_AS_CACHED = frozenset(
    {None, "file-deleted", "file-replaced", "file-unreadable", "header-rewritten"}
)
"""Stale reasons under which the cache still shows the chain qemu has open: files changed
behind both, but qemu keeps what it opened."""
NON_BACKING_FORMATS = frozenset(LIBVIRT_FORMAT_NAMES) - LIBVIRT_BACKING_FORMATS - {"none"}
DEFINABLE_FORMATS = frozenset(LIBVIRT_FORMAT_NAMES) - {"none"}
"""The format names a disk definition accepts (virStorageFileFormatTypeFromString > 0)."""
"""libvirt's formats below VIR_STORAGE_FILE_BACKING: never opened to read a header."""


class OpError(StrEnum):
    """Stable codes of refused operations (chain errors keep their own codes)."""

    NO_DOMAIN = "no-such-domain"
    DOMAIN_EXISTS = "domain-exists"
    NOT_RUNNING = "domain-not-running"
    RUNNING = "domain-running"
    NO_DISK = "no-such-disk"
    DISK_EXISTS = "disk-exists"
    NOT_REMOVABLE = "not-removable"
    INVALID_PATH = "invalid-path"
    FILE_EXISTS = "file-exists"
    FILE_MISSING = "file-missing"
    JOB_ACTIVE = "job-active"
    NO_JOB = "no-job"
    JOB_NOT_READY = "job-not-ready"
    TOP_NOT_FOUND = "top-not-found"
    TOP_HAS_NO_BACKING = "top-has-no-backing"
    BASE_NOT_FOUND = "base-not-found"
    BASE_NOT_BELOW_TOP = "base-not-below-top"
    ACTIVE_COMMIT_NEEDS_FLAG = "active-commit-needs-flag"
    UNSUPPORTED = "unsupported"
    NO_EVENT = "no-such-event"
    NO_SOURCE = "disk-has-no-source"
    IN_CHAIN = "file-in-chain"
    IMAGE_LOCKED = "image-locked"
    INVALID_CONFIG = "invalid-config"
    TRANSIENT = "domain-transient"
    NOT_IN_FORMAT = "image-not-in-format"
    MEDIUM_NOT_IN_QEMU = "medium-not-in-qemu"


class DiskType(StrEnum):
    """libvirt's <disk type=...>."""

    FILE = "file"
    BLOCK = "block"
    NETWORK = "network"
    VOLUME = "volume"


@dataclass(frozen=True)
class Outcome:
    """libvirt's return code and, on failure, the error's stable code and message."""

    rc: int
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0


OK = Outcome(0)


def _fail(code: str, message: str) -> Outcome:
    return Outcome(-1, code, message)


@dataclass(frozen=True)
class BackingSpec:
    """One element of a <backingStore> the user wrote in the definition."""

    path: str
    format: str


@dataclass(frozen=True)
class DiskConfig:
    """A disk as its definition gives it (the persistent, user-specified part)."""

    target: str
    path: str | None
    format: str | None = None
    type: DiskType = DiskType.FILE
    device: str = "disk"
    backing: tuple[BackingSpec, ...] = ()
    backing_terminated: bool = False
    """The user ended the <backingStore> chain with an empty element."""


@dataclass
class LiveDisk:
    """A disk of a running domain: its source now, and the chain libvirt caches for it."""

    config: DiskConfig
    chain: Chain | None = None
    top_index: int = 0
    stale_reason: str | None = None
    """Why the cache may lawfully differ from the files (a window the profile documents)."""
    job: int | None = None
    ended_unwaited: bool = False
    """A job of this disk ended on its own and no caller has waited for it since: the next
    wait reports its end."""
    medium_lost: bool = False
    """qemu has no medium in this drive while libvirt lists a source for it (a media change
    qemu refused after the old medium was removed, or an eject): the node names libvirt
    gives qemu for it name nothing."""
    detached_files: set[str] = field(default_factory=set)
    """Files this disk's qemu holds open that their path no longer reaches (deleted since,
    by lock key): qemu writes to them through its descriptors, unseen."""


@dataclass
class Domain:
    name: str
    persistent: bool
    config: list[DiskConfig]
    """libvirt's newDef (or def of a shut-off domain): what the user defined."""
    live: list[LiveDisk] | None = None
    """libvirt's live def while the domain runs."""
    next_index: int = 0

    @property
    def running(self) -> bool:
        return self.live is not None

    def live_disk(self, target: str) -> LiveDisk | None:
        for disk in self.live or ():
            if disk.config.target == target:
                return disk
        return None


@dataclass
class Counters:
    """What the cache rules cost and risked during a run."""

    probes: int = 0
    """Calls that opened images to determine a chain."""
    header_bytes_read: int = 0
    probes_of_open_files: int = 0
    """Images probed while qemu held them open for writing: the seed's hazard."""
    stale_operations: int = 0
    """Operations that read a cached chain that no longer matched the files."""
    failed_probes: int = 0


@dataclass(frozen=True)
class Violation:
    """A cached chain that differs from the files outside any documented window."""

    domain: str
    target: str
    cached: tuple[str, ...] | None
    fresh: tuple[str, ...] | str


class FaultyStorage:
    """The host's storage with files a test marks unreadable (a fault root cannot cause)."""

    def __init__(self, inner: Storage | None = None) -> None:
        self.inner = inner if inner is not None else LocalStorage()
        self.unreadable: set[str] = set()

    def kind(self, path: str) -> FileKind | None:
        return self.inner.kind(path)

    def open(self, path: str) -> ImageFile:
        if path in self.unreadable:
            raise PermissionError(13, "Permission denied", path)
        return self.inner.open(path)

    def canonical(self, path: str) -> str:
        return self.inner.canonical(path)

    def write(self, path: str, data: Content, offset: int | None = None) -> None:
        self.inner.write(path, data, offset)

    def remove(self, path: str) -> None:
        self.inner.remove(path)


class Hypervisor:
    """libvirt's qemu driver and a simulated qemu, as far as backing chains go."""

    def __init__(
        self,
        profile: Profile,
        storage: FaultyStorage | None = None,
        *,
        cgroup_devices: bool = True,
        track_staleness: bool = True,
    ) -> None:
        self.profile = profile
        self.rules = profile.cache
        self.storage = storage if storage is not None else FaultyStorage()
        self.cgroup_devices = cgroup_devices
        self.track_staleness = track_staleness
        self.domains: dict[str, Domain] = {}
        self.jobs: dict[int, BlockJob] = {}
        self.events = EventQueue()
        self.counters = Counters()
        self.prober_seconds = 0.0
        """Time spent in counted probes (perf_counter): measured, so kept out of ``counters``."""
        self.granted: dict[str, set[str]] = {}
        """Files each running domain was granted access to (cgroup ACLs and labels)."""
        self._next_job = 1

    # -- probing ------------------------------------------------------------------------

    def probe_chain(self, path: str, format: str | None) -> Chain:
        """One counted probe, as libvirt's crawler does it."""
        prober = Prober(self.profile, self.storage)
        self.counters.probes += 1
        if not os.path.isabs(path):
            self.counters.failed_probes += 1
            raise _relative_source(path)
        started = time.perf_counter()
        try:
            return prober.probe(path, format)
        except ChainError:
            self.counters.failed_probes += 1
            raise
        finally:
            self.prober_seconds += time.perf_counter() - started
            self.counters.header_bytes_read += prober.stats.header_bytes_read
            writing = self.open_for_writing()
            self.counters.probes_of_open_files += sum(
                1 for opened in prober.stats.opened_paths if opened in writing
            )

    def fresh_chain(self, config: DiskConfig) -> Chain | ChainError:
        """What a probe would find now, uncounted: the truth the cache is held to.

        Where the rules never open an image (modern libvirt and a format without
        backing), the truth is only whether the file is there.
        """
        path = config.path or ""
        if not os.path.isabs(path):
            return _relative_source(path)
        if self.rules.models_jobs and config.format in NON_BACKING_FORMATS:
            if self.storage.kind(path) is None:
                return ChainError(ErrorCode.NOT_FOUND, f"Cannot access storage file '{path}'")
            return Chain((Layer(path, config.format, _layer_type(config)),), True)
        try:
            return Prober(self.profile, self.storage).probe(config.path or "", config.format)
        except ChainError as error:
            return error

    def determine_disk_chain(self, domain: Domain, disk: LiveDisk, force: bool) -> Outcome:
        """qemuDomainDetermineDiskChain under the profile's rules, to the return code."""
        if self.profile.cache.snapshot is SnapshotRule.DROP_CACHE:
            return self._determine_2012(disk, force)
        return self._determine_modern(domain, disk, force)

    def _determine_2012(self, disk: LiveDisk, force: bool) -> Outcome:
        config = disk.config
        if not config.path:
            return OK
        if not self.rules.network_disks_probed and config.type in (
            DiskType.NETWORK,
            DiskType.VOLUME,
        ):
            return OK
        if disk.chain is not None:
            if not force and self.rules.reuses_cache:
                return OK
            disk.chain = None
        try:
            disk.chain = self._with_indexes(self.probe_chain(config.path, config.format), 0)
        except ChainError as error:
            disk.chain = None
            if force:
                return Outcome(self.rules.forced_failure_rc, error.code.value, error.message)
            return _fail(error.code.value, error.message)
        disk.stale_reason = None
        return OK

    def _determine_modern(self, domain: Domain, disk: LiveDisk, force: bool) -> Outcome:
        config = disk.config
        if force:
            disk.chain = None
        if not config.path:
            return OK
        if disk.chain is not None:
            return self._determine_below_known(domain, disk, disk.chain)
        top_format = config.format or "raw"
        if config.backing and top_format in NON_BACKING_FORMATS:
            # qemuDomainValidateStorageSource, when the disk is prepared (start, hotplug).
            return _fail(
                OpError.INVALID_CONFIG,
                f"unsupported configuration: storage format '{top_format}' "
                "does not support backing store",
            )
        local = config.type in (DiskType.FILE, DiskType.BLOCK)
        if local and config.format in NON_BACKING_FORMATS:
            if not os.path.isabs(config.path) or self.storage.kind(config.path) is None:
                return _fail(
                    ErrorCode.NOT_FOUND.value,
                    f"Cannot access storage file '{config.path}': No such file or directory",
                )
            top = Layer(config.path, config.format, _layer_type(config), index=disk.top_index)
            disk.chain = Chain((top,), True)
            disk.stale_reason = None
            return OK
        if not local:
            top = Layer(config.path, config.format or "raw", LayerType.NETWORK)
            disk.chain = Chain((evolve(top, index=disk.top_index),), False)
            return OK
        if self.rules.user_backing_store and _user_chain(config):
            return self._determine_user_chain(domain, disk)
        try:
            probed = self.probe_chain(config.path, config.format)
        except ChainError as error:
            return _fail(error.code.value, error.message)
        chain = self._assign_detected(domain, disk, probed.layers, probed.terminated)
        outcome = self._validate_depth(disk, chain, 0)
        if outcome.ok:
            disk.chain = chain
            disk.stale_reason = None
        return outcome

    def _determine_below_known(self, domain: Domain, disk: LiveDisk, chain: Chain) -> Outcome:
        """A chain is already there: check access down to its end, detect only below it."""
        top = chain.layers[0].filename
        for position, layer in enumerate(chain.layers):
            has_backing = position < len(chain) - 1 or not chain.terminated
            local = layer.type in (LayerType.FILE, LayerType.BLOCK)
            if has_backing and local and self.storage.kind(layer.filename) is None:
                if position == 0:
                    message = f"Cannot access storage file '{top}': No such file or directory"
                    return _fail(ErrorCode.NOT_FOUND.value, message)
                message = (
                    f"Cannot access backing file '{layer.filename}' of storage file '{top}': "
                    "No such file or directory"
                )
                return _fail(ErrorCode.BACKING_MISSING.value, message)
        last = chain.layers[-1]
        if chain.terminated or last.type not in (LayerType.FILE, LayerType.BLOCK):
            return self._validate_depth(disk, chain, 0)
        try:
            below = self.probe_chain(last.filename, last.format)
        except ChainError as error:
            return _fail(error.code.value, error.message)
        detected = self._assign_detected(domain, disk, below.layers, below.terminated)
        extended = Chain((*chain.layers, *detected.layers[1:]), detected.terminated)
        outcome = self._validate_depth(disk, extended, 0)
        if outcome.ok:
            disk.chain = extended
        return outcome

    def _determine_user_chain(self, domain: Domain, disk: LiveDisk) -> Outcome:
        """The user's <backingStore> elements are trusted: only checked to exist."""
        config = disk.config
        assert config.path is not None
        if self.storage.kind(config.path) is None:
            return _fail(
                ErrorCode.NOT_FOUND.value,
                f"Cannot access storage file '{config.path}': No such file or directory",
            )
        layers = list(_defined_layers(config))
        for element in config.backing:
            if self.storage.kind(element.path) is None:
                return _fail(
                    ErrorCode.BACKING_MISSING.value,
                    f"Cannot access backing file '{element.path}' of storage file "
                    f"'{config.path}': No such file or directory",
                )
        terminated = config.backing_terminated
        if not terminated:
            last = config.backing[-1]
            try:
                below = self.probe_chain(last.path, last.format)
            except ChainError as error:
                return _fail(error.code.value, error.message)
            layers.extend(below.layers[1:])
            terminated = below.terminated
        chain = self._assign_detected(domain, disk, tuple(layers), terminated)
        outcome = self._validate_depth(disk, chain, 0)
        if outcome.ok:
            disk.chain = chain
        return outcome

    def _assign_detected(
        self, domain: Domain, disk: LiveDisk, layers: tuple[Layer, ...], terminated: bool
    ) -> Chain:
        top = evolve(layers[0], index=disk.top_index)
        below = []
        for depth, layer in enumerate(layers[1:], start=1):
            if self.rules.index is IndexRule.DOMAIN_COUNTER:
                below.append(evolve(layer, index=self._new_index(domain)))
            else:
                below.append(evolve(layer, index=depth))
        return Chain((top, *below), terminated)

    def _with_indexes(self, chain: Chain, top_index: int) -> Chain:
        layers = tuple(evolve(layer, index=depth) for depth, layer in enumerate(chain.layers))
        return Chain(layers, chain.terminated)

    def _number_hotplugged(self, domain: Domain, disk: LiveDisk) -> None:
        """A hot-plugged chain is numbered anew, top first, after detection numbered its backing.

        libvirt 9.0 gives the layers qemuDomainDetermineDiskChain detects an index
        each, then qemuDomainPrepareDiskSource gives every layer a new one: the
        first numbers are used up.
        """
        if self.rules.index is not IndexRule.DOMAIN_COUNTER:
            return
        if disk.chain is None:
            # An ejected drive's empty source is numbered too (observed with libvirt 9.0).
            disk.top_index = self._new_index(domain)
            return
        layers = tuple(evolve(layer, index=self._new_index(domain)) for layer in disk.chain.layers)
        disk.chain = Chain(layers, disk.chain.terminated)
        disk.top_index = layers[0].index

    def _new_index(self, domain: Domain) -> int:
        domain.next_index += 1
        return domain.next_index

    def _validate_depth(self, disk: LiveDisk, chain: Chain, add: int) -> Outcome:
        """qemuDomainStorageSourceValidateDepth."""
        limit = self.rules.depth_limit
        if limit is not None and len(chain) + add > limit:
            return _fail(
                ErrorCode.TOO_DEEP.value,
                f"backing chains more than {limit} layers deep are not supported "
                f"for disk '{disk.config.target}'",
            )
        return OK

    # -- lifecycle ----------------------------------------------------------------------

    def define(self, name: str, disks: list[DiskConfig]) -> Outcome:
        """virDomainDefineXML: a new persistent domain, or a new definition of one."""
        problem = self._check_disks(disks)
        if problem is not None:
            return problem
        domain = self.domains.get(name)
        if domain is None:
            self.domains[name] = Domain(name, True, list(disks))
        else:
            domain.config = list(disks)
            domain.persistent = True
        return OK

    def undefine(self, name: str) -> Outcome:
        domain = self.domains.get(name)
        if domain is None:
            return _no_domain(name)
        if not domain.persistent:
            return _fail(OpError.TRANSIENT, "cannot undefine transient domain")
        if domain.running:
            domain.persistent = False
        else:
            del self.domains[name]
        return OK

    def create(self, name: str, disks: list[DiskConfig]) -> Outcome:
        """virDomainCreateXML: a transient domain, started at once."""
        if name in self.domains:
            return _fail(OpError.DOMAIN_EXISTS, f"domain '{name}' already exists")
        problem = self._check_disks(disks)
        if problem is not None:
            return problem
        self.domains[name] = Domain(name, False, list(disks))
        outcome = self.start(name)
        if not outcome.ok:
            del self.domains[name]
        return outcome

    def start(self, name: str) -> Outcome:
        """qemuProcessStart: the live definition is a copy; chains are determined."""
        domain = self.domains.get(name)
        if domain is None:
            return _no_domain(name)
        if domain.running:
            return _fail(OpError.RUNNING, f"domain '{name}' is already running")
        live = [LiveDisk(config) for config in domain.config]
        domain.next_index = 0
        if self.rules.index is IndexRule.DOMAIN_COUNTER:
            # qemuProcessPrepareDomainStorage walks the disks from the last one.
            # An empty drive's source is numbered too.
            for disk in reversed(live):
                disk.top_index = self._new_index(domain)
        if not self.rules.chain_needs_cgroup_devices or self.cgroup_devices:
            order = reversed(live) if self.rules.models_jobs else iter(live)
            for disk in order:
                outcome = self.determine_disk_chain(domain, disk, False)
                if not outcome.ok:
                    return outcome
        refused = self._domain_lock_conflict(live) or self._qemu_open_refusal(live)
        if refused is not None:
            return refused
        domain.live = live
        self.granted[name] = set()
        for disk in live:
            self._grant(name, disk)
        return OK

    def destroy(self, name: str) -> Outcome:
        """qemuProcessStop: qemu is gone; the live definition (and its chains) is freed."""
        domain = self.domains.get(name)
        if domain is None:
            return _no_domain(name)
        if not domain.running:
            return _fail(OpError.NOT_RUNNING, f"domain '{name}' is not running")
        for disk in domain.live or ():
            self._revoke(name, disk, whole_chain=True)
            if self.rules.stop_loop:
                disk.chain = None
        for job_id in [job.id for job in self.jobs.values() if job.domain == name]:
            del self.jobs[job_id]
        self.events.drop_domain(name)
        domain.live = None
        if not self.granted.get(name):
            self.granted.pop(name, None)
        if not domain.persistent:
            del self.domains[name]
        return OK

    def daemon_restart(self) -> Outcome:
        """libvirtd restarts and reconnects to the running qemu processes."""
        for domain in self.domains.values():
            for disk in domain.live or ():
                # A synchronous caller's wait does not outlive its connection to the daemon.
                disk.ended_unwaited = False
                if not self.rules.survives_restart:
                    disk.chain = None
                    disk.stale_reason = None
        if self.rules.survives_restart:
            # Jobs that finished while the daemon was down are replayed from the status XML.
            for event in list(self.events.pending):
                self.deliver(event.id)
        else:
            # The events are lost. A job qemu has finished no longer exists in qemu, which
            # was the only record of it (job state reached the status XML in 3.9).
            for event in self.events.pending:
                job = self.jobs.get(event.job)
                owner = self.domains.get(event.domain)
                live = owner.live_disk(event.target) if owner else None
                ended = (JobState.COMPLETED, JobState.FAILED)
                if job is not None and live is not None and job.state in ended:
                    self._finish_job(live, job)
            self.events.pending.clear()
        return OK

    # -- hotplug and media --------------------------------------------------------------

    def attach(self, name: str, config: DiskConfig) -> Outcome:
        """qemuDomainAttachDeviceDiskLive: the new disk's chain must be determined first."""
        domain, problem = self._running(name)
        if domain is None:
            return problem
        if domain.live_disk(config.target) is not None:
            return _fail(OpError.DISK_EXISTS, f"target {config.target} already exists")
        path_problem = self._check_disks([config])
        if path_problem is not None:
            return path_problem
        disk = LiveDisk(config)
        outcome = self.determine_disk_chain(domain, disk, False)
        if not outcome.ok:
            return outcome
        self._number_hotplugged(domain, disk)
        refused = self._lock_conflict(*self._disk_files(disk)) or self._qemu_open_refusal([disk])
        if refused is not None:
            return refused
        assert domain.live is not None
        domain.live.append(disk)
        self._grant(name, disk)
        return OK

    def detach(self, name: str, target: str) -> Outcome:
        """qemuDomainDetachDeviceDiskLive: access to the disk's files is revoked."""
        domain, problem = self._running(name)
        if domain is None:
            return problem
        disk = domain.live_disk(target)
        if disk is None:
            return _no_disk(name, target)
        if disk.config.device in ("cdrom", "floppy"):
            # Removable media are changed, never unplugged (qemuDomainDetachPrepDisk).
            message = f"disk device type '{disk.config.device}' cannot be detached"
            return _fail(OpError.UNSUPPORTED, message)
        if disk.job is not None:
            return _fail(OpError.JOB_ACTIVE, f"disk '{target}' has an active block job")
        self._revoke(name, disk, whole_chain=self.rules.detach_revokes_cached_chain)
        assert domain.live is not None
        domain.live.remove(disk)
        return OK

    def change_media(self, name: str, target: str, path: str | None, fmt: str | None) -> Outcome:
        """qemuDomainChangeEjectableMedia: a cdrom or floppy gets another image (or none)."""
        domain, problem = self._running(name)
        if domain is None:
            return problem
        disk = domain.live_disk(target)
        if disk is None:
            return _no_disk(name, target)
        if self.rules.same_medium_is_noop and path == disk.config.path:
            return OK
        if disk.config.device not in ("cdrom", "floppy"):
            return _fail(OpError.NOT_REMOVABLE, f"disk '{target}' is not a cdrom or floppy")
        if disk.job is not None:
            return _fail(
                OpError.JOB_ACTIVE, "can't change media while a block job is running on the device"
            )
        new_config = evolve(disk.config, path=path, format=fmt, backing=())
        candidate = LiveDisk(new_config, top_index=disk.top_index)
        outcome = self.determine_disk_chain(domain, candidate, False)
        if not outcome.ok:
            return outcome
        self._number_hotplugged(domain, candidate)
        refused = self._lock_conflict(
            *self._disk_files(candidate), excluding=(disk,)
        ) or self._qemu_open_refusal([candidate])
        if refused is not None:
            # qemu refused to open the new medium; in 9.0 the old one is gone already.
            disk.medium_lost = self.rules.media_change_removes_first
            return refused
        self._revoke(name, disk, whole_chain=True)
        disk.config = new_config
        disk.top_index = candidate.top_index
        disk.medium_lost = self.rules.media_change_removes_first and path is None
        if self.rules.media_change_keeps_old_chain:
            # The probe ran on a copy of the definition, which is freed: the old chain stays.
            disk.stale_reason = "media-change-keeps-old-chain" if disk.chain else None
        else:
            disk.chain = candidate.chain
            disk.stale_reason = None
        self._grant(name, disk)
        return OK

    # -- snapshots ----------------------------------------------------------------------

    def snapshot(
        self, name: str, target: str, overlay: str, *, reuse: bool = False, fmt: str = "qcow2"
    ) -> Outcome:
        """An external disk-only snapshot of one disk: ``overlay`` becomes the active layer."""
        known = self.domains.get(name)
        if known is not None and self.rules.arguments_first and not os.path.isabs(overlay):
            return _fail(
                OpError.INVALID_PATH, f"disk snapshot image path '{overlay}' must be absolute"
            )
        if known is not None and not known.running and self.rules.offline_snapshot:
            return self._snapshot_offline(known, target, overlay, reuse, fmt)
        domain, problem = self._running(name)
        if domain is None:
            return problem
        missing = _snapshot_disk_missing([disk.config.target for disk in domain.live or ()], target)
        if missing is not None:
            return missing
        disk = domain.live_disk(target)
        assert disk is not None
        if not os.path.isabs(overlay):
            return _fail(OpError.INVALID_PATH, f"snapshot file '{overlay}' must be absolute")
        if disk.job is not None:
            return _fail(OpError.JOB_ACTIVE, f"disk '{target}' has an active block job")
        exists = self.storage.kind(overlay) is not None
        if reuse and self._refuses_as_in_chain(disk, overlay):
            return _in_chain(overlay, target)
        if reuse and not exists:
            return _fail(OpError.FILE_MISSING, f"missing existing file for disk {target}")
        if not reuse and exists:
            return _fail(OpError.FILE_EXISTS, f"external snapshot file for disk {target} exists")
        modelled = self.rules.snapshot is SnapshotRule.MODEL
        if modelled:
            current = disk.chain or Chain((Layer(disk.config.path or "", "raw"),), False)
            self._note_cache_read(domain, disk)
            outcome = self._validate_depth(disk, current, 1)
            if not outcome.ok:
                return outcome
        # libvirt 9.0 numbers the overlay before it finds the drive empty or qemu refuses to
        # open it, so such a snapshot still uses up an index.
        counter = self.rules.index is IndexRule.DOMAIN_COUNTER
        overlay_index = self._new_index(domain) if counter else 0
        if disk.medium_lost:
            return _no_size_for_node(disk.top_index)
        if not disk.config.path:
            return _no_source(target)
        if reuse:  # a new overlay is no file anyone holds
            # A read-only drive's overlay is opened read-only too: it may even be a file
            # the drive already reads.
            writable = _writable(disk.config)
            refused = self._reused_file_refused(overlay, fmt, set(), writes=writable)
            if refused is not None:
                return refused
        if not modelled:
            # "nuke the existing chain so that future commands will recompute it"
            disk.chain = None
            disk.stale_reason = None
        old_path = disk.config.path or ""
        old_format = disk.config.format or "raw"
        if not reuse:
            size = self._virtual_size(disk)
            version = self.rules.overlay_qcow2_version
            image = qcow2.Qcow2Image(size, old_path.encode(), old_format, version)
            self.storage.write(overlay, qcow2.encode_parts(image))
        new_config = evolve(disk.config, path=overlay, format=fmt, backing=())
        if modelled:
            # With nothing cached (a failed forced re-probe emptied it), the old top alone.
            index = overlay_index
            below = [evolve(current.layers[0], index=disk.top_index)]
            recorded = self._recorded_backing(overlay, fmt) if reuse else None
            if recorded is not None and backing_names.is_relative(recorded):
                # e20853e1d: the old top's relPath is what the user's overlay records.
                below[0] = evolve(below[0], relative_path=recorded)
            below += current.layers[1:]
            if self.rules.index is IndexRule.DEPTH:
                below = [evolve(layer, index=depth + 1) for depth, layer in enumerate(below)]
            top = Layer(overlay, fmt, index=index)
            disk.chain = Chain((top, *below), current.terminated)
            disk.top_index = index
        disk.config = new_config
        if modelled and reuse and disk.stale_reason is None:
            # 7456c4f5f: what a reused overlay records below itself is not trusted.
            fresh = self.fresh_chain(new_config)
            assert disk.chain is not None
            if isinstance(fresh, ChainError) or _shape(fresh) != _shape(disk.chain):
                disk.stale_reason = "reuse-overlay-backing-not-trusted"
        if domain.persistent:
            domain.config = [
                evolve(config, path=overlay, format=fmt, backing=())
                if config.target == target
                else config
                for config in domain.config
            ]
        disk.detached_files.discard(self._lock_key(overlay))  # qemu opens what is there now
        self.granted.setdefault(name, set()).add(overlay)
        return OK

    def _snapshot_offline(
        self, domain: Domain, target: str, overlay: str, reuse: bool, fmt: str
    ) -> Outcome:
        """qemuSnapshotCreateInactiveExternal: qemu-img makes the overlay, the config uses it."""
        missing = _snapshot_disk_missing([config.target for config in domain.config], target)
        if missing is not None:
            return missing
        config = next(config for config in domain.config if config.target == target)
        if not os.path.isabs(overlay):
            return _fail(OpError.INVALID_PATH, f"snapshot file '{overlay}' must be absolute")
        exists = self.storage.kind(overlay) is not None
        if reuse and not exists:
            return _fail(OpError.FILE_MISSING, f"missing existing file for disk {target}")
        if not reuse and exists:
            return _fail(OpError.FILE_EXISTS, f"external snapshot file for disk {target} exists")
        if not config.path:
            return _no_source(target)
        if not reuse:
            image = qcow2.Qcow2Image(
                DEFAULT_SIZE,
                config.path.encode(),
                config.format or "raw",
                self.rules.overlay_qcow2_version,
            )
            self.storage.write(overlay, qcow2.encode_parts(image))
        backing: tuple[BackingSpec, ...] = ()
        if not reuse and config.backing:
            # The old source, with the <backingStore> the user gave it, goes below.
            backing = (BackingSpec(config.path, config.format or "raw"), *config.backing)
        terminated = bool(backing) and config.backing_terminated
        new_config = evolve(
            config, path=overlay, format=fmt, backing=backing, backing_terminated=terminated
        )
        domain.config = [new_config if other is config else other for other in domain.config]
        return OK

    # -- block jobs ---------------------------------------------------------------------

    def block_pull(self, name: str, target: str, base: str | None = None) -> Outcome:
        """virDomainBlockRebase/Pull: stream the chain above ``base`` into the active layer."""
        first = self.rules.arguments_first
        domain, disk, problem = self._job_disk(name, target, empty_ok=first)
        if disk is None:
            return problem
        if not disk.config.path:
            if base is not None:
                # libvirt 9.0 looks the base up below the empty drive's null source first.
                return _fail(OpError.BASE_NOT_FOUND, _not_in_chain(base, target, NULL_SOURCE, True))
            if disk.medium_lost:
                return _no_node_for_stream(disk.top_index)
            return _no_source(target)
        chain, problem = self._chain_for_job(domain, disk)
        if chain is None:
            return problem
        base_layer = None
        if base is not None:
            addressing = self.rules.index is not IndexRule.NONE
            base_layer = _lookup(chain, base, target, below=0, indexes=addressing)
            if base_layer is None or base_layer == 0:
                top_name = chain.layers[0].filename
                message = _not_in_chain(base, target, top_name, indexes=addressing)
                return _fail(OpError.BASE_NOT_FOUND, message)
        removed = tuple(
            layer.filename for layer in chain.layers[1 : base_layer if base_layer else None]
        )
        if removed and chain.layers[0].format != "qcow2":
            return _only_qcow2_rewritten(chain.layers[0].filename)
        if disk.medium_lost:
            return _no_node_for_stream(disk.top_index)
        job = self._new_job(
            JobKind.PULL,
            name,
            target,
            top=chain.layers[0].filename,
            base=chain.layers[base_layer].filename if base_layer else None,
            removed=removed,
            base_format=chain.layers[base_layer].format if base_layer else None,
        )
        self._start_job(disk, job)
        if not removed and disk.stale_reason in QEMU_CHAIN_AS_CACHED:
            # Nothing lies between the top and the base: qemu's stream has nothing to copy
            # and ends at once, and libvirt handles the end before the caller's next call.
            # (qemu judges by the chain it has open, which a lagging cache may not show.)
            self.job_wait(name, target)
            disk.ended_unwaited = True
        return OK

    def block_commit(
        self,
        name: str,
        target: str,
        top: str | None = None,
        base: str | None = None,
        *,
        active: bool = False,
        shallow: bool = False,
        delete: bool = False,
    ) -> Outcome:
        """virDomainBlockCommit: the data of ``top`` and below (down to ``base``) into base."""
        if self.rules.arguments_first:
            looked_up = self._commit_lookups_first(name, target, top, base, shallow)
            if looked_up is not None:
                return looked_up
        domain, disk, problem = self._job_disk(name, target)
        if disk is None:
            return problem
        chain, problem = self._chain_for_job(domain, disk)
        if chain is None:
            return problem
        if delete and not self.rules.commit_delete:
            return _fail(
                OpError.UNSUPPORTED, "unsupported flags (0x2) in function qemuDomainBlockCommit"
            )
        top_at, base_at, problem = self._commit_range(chain, target, top, base, shallow)
        if top_at is None or base_at is None:
            return problem
        top_name = chain.layers[top_at].filename
        active_first = self.rules.commit_active_checks_first
        if not active_first:
            problem = _commit_base_problem(chain, top_at, base_at, shallow)
            if not problem.ok:
                return problem
        # libvirt 9.0 looks the base up before it asks for the active flag.
        if top_at == 0 and not self.rules.active_commit:
            return _fail(OpError.UNSUPPORTED, "committing the active layer not supported yet")
        if top_at == 0 and not active:
            return _fail(
                OpError.ACTIVE_COMMIT_NEEDS_FLAG,
                f"commit of '{target}' active layer requires active flag",
            )
        if top_at != 0 and active:
            return _fail(
                OpError.ACTIVE_COMMIT_NEEDS_FLAG,
                f"active commit requested but '{top_name}' is not active",
            )
        if active_first:
            problem = _commit_base_problem(chain, top_at, base_at, shallow)
            if not problem.ok:
                return problem
        if self.rules.commit_stats_written_layers:
            # The base, then the top's parent unless qemu writes it already.
            written = [chain.layers[base_at]]
            if top_at > 1:
                written.append(chain.layers[top_at - 1])
            for layer in written:
                local = layer.type in (LayerType.FILE, LayerType.BLOCK)
                if local and self.storage.kind(layer.filename) is None:
                    return _fail(
                        ErrorCode.NOT_FOUND,
                        f"Path '{layer.filename}' is not accessible: No such file or directory",
                    )
        kind = JobKind.ACTIVE_COMMIT if top_at == 0 else JobKind.COMMIT
        if kind is JobKind.COMMIT and chain.layers[top_at - 1].format != "qcow2":
            return _only_qcow2_rewritten(chain.layers[top_at - 1].filename)
        if disk.medium_lost:
            return _no_node_for_commit(disk.top_index)
        locked = self._lock_conflict({chain.layers[base_at].filename}, set(), excluding=(disk,))
        if locked is not None:
            return locked
        job = self._new_job(
            kind,
            name,
            target,
            top=top_name,
            base=chain.layers[base_at].filename,
            delete=delete,
            removed=tuple(layer.filename for layer in chain.layers[top_at:base_at]),
            parent=chain.layers[top_at - 1].filename if top_at > 0 else None,
            base_format=chain.layers[base_at].format,
        )
        self._start_job(disk, job)
        return OK

    def _commit_range(
        self, chain: Chain, target: str, top: str | None, base: str | None, shallow: bool
    ) -> tuple[int | None, int | None, Outcome]:
        """The positions of ``top`` and ``base`` in the chain, or why they are not there.

        A shallow commit without a base takes the layer right below the top; below the
        bottom layer of a terminated chain that is the terminator, at ``len(chain)``."""
        addressing = self.rules.index is not IndexRule.NONE
        legacy = self.rules.legacy_commit_wording
        top_at: int | None = 0
        if top is not None:
            top_at = _lookup(chain, top, target, below=None, indexes=addressing)
        if top_at is None:
            assert top is not None
            if legacy:
                message = f"could not find top '{top}' in chain for '{target}'"
            else:
                message = _not_in_chain(top, target, None, indexes=addressing)
            return None, None, _fail(OpError.TOP_NOT_FOUND, message)
        top_name = chain.layers[top_at].filename
        if top_at == len(chain) - 1:
            if not self.rules.terminated_chains:
                message = f"top '{top_name}' in chain for '{target}' has no backing file"
                return top_at, None, _fail(OpError.TOP_HAS_NO_BACKING, message)
            if shallow and base is None:
                return top_at, top_at + 1, OK
            message = f"could not find base image in chain for '{target}'"
            return top_at, None, _fail(OpError.BASE_NOT_FOUND, message)
        if base is None:
            return top_at, top_at + 1 if shallow else len(chain) - 1, OK
        base_at = _lookup(chain, base, target, below=top_at, indexes=addressing)
        if base_at is not None:
            return top_at, base_at, OK
        if legacy:
            message = f"could not find base '{base}' below '{top_name}' in chain for '{target}'"
        else:
            message = _not_in_chain(base, target, top_name, indexes=addressing)
        return top_at, None, _fail(OpError.BASE_NOT_FOUND, message)

    def _commit_lookups_first(
        self, name: str, target: str, top: str | None, base: str | None, shallow: bool
    ) -> Outcome | None:
        """Top and base looked up before the domain and disk are checked, in the chain
        libvirt has then: the definition of a shut-off domain (the top and the user's
        <backingStore>), a null top for an empty drive, the cache of a disk with a job.
        None: go on with the usual checks."""
        domain = self.domains.get(name)
        if domain is None:
            return None
        blocked: Outcome | None
        if not domain.running:
            config = next((config for config in domain.config if config.target == target), None)
            if config is None:
                return _no_disk(name, target)
            chain = Chain(_defined_layers(config), config.backing_terminated)
            blocked = _fail(OpError.NOT_RUNNING, f"domain '{name}' is not running")
        else:
            disk = domain.live_disk(target)
            if disk is None:
                return None
            if not disk.config.path:
                chain, blocked = Chain(_defined_layers(disk.config), False), _no_source(target)
            elif disk.job is not None and disk.chain is not None:
                chain, blocked = disk.chain, None
            else:
                return None
        top_at, base_at, problem = self._commit_range(chain, target, top, base, shallow)
        if top_at is None or base_at is None:
            return problem
        return blocked

    def block_copy(
        self,
        name: str,
        target: str,
        destination: str,
        *,
        shallow: bool = False,
        reuse: bool = False,
    ) -> Outcome:
        """virDomainBlockCopy: mirror the disk to ``destination``; pivot or abort later."""
        first = self.rules.arguments_first
        relative = not os.path.isabs(destination)
        if first and relative and name in self.domains:
            return _relative_copy_destination(destination)
        domain, disk, problem = self._job_disk(name, target, empty_ok=first)
        if disk is None:
            return problem
        if relative:
            return _relative_copy_destination(destination)
        exists = self.storage.kind(destination) is not None
        if reuse and self._refuses_as_in_chain(disk, destination):
            return _in_chain(destination, target)
        if reuse and not exists:
            return _fail(OpError.FILE_MISSING, f"missing destination file '{destination}'")
        if not reuse and exists:
            return _fail(OpError.FILE_EXISTS, f"destination file '{destination}' exists")
        # libvirt 9.0 numbers the mirror before it finds the drive empty or qemu refuses to
        # open the destination, so such a copy still uses up its index; a reused shallow
        # destination's backing is detected and numbered too.
        counter = self.rules.index is IndexRule.DOMAIN_COUNTER
        if not disk.config.path or disk.medium_lost:
            if counter:
                self._new_index(domain)
            return _no_size_for_node(disk.top_index) if disk.medium_lost else _no_source(target)
        chain, problem = self._chain_for_job(domain, disk)
        if chain is None:
            return problem
        mirror = LiveDisk(_mirror_config(disk.config, destination))
        mirror.top_index = self._new_index(domain) if counter else 0
        if counter and reuse and shallow:
            outcome = self.determine_disk_chain(domain, mirror, False)
            if not outcome.ok:
                return outcome
        if reuse:  # a new destination is no file anyone holds
            recorded_below = mirror.chain.layers[1:] if mirror.chain else ()
            reads = {layer.filename for layer in recorded_below}
            refused = self._reused_file_refused(destination, "qcow2", reads)
            if refused is not None:
                return refused
        if not reuse:
            size = self._virtual_size(disk)
            below = chain.layers[1] if shallow and len(chain) > 1 else None
            name_below = below.filename.encode() if below else None
            version = self.rules.overlay_qcow2_version
            image = qcow2.Qcow2Image(size, name_below, below.format if below else None, version)
            self.storage.write(destination, qcow2.encode_parts(image))
        job = self._new_job(
            JobKind.COPY,
            name,
            target,
            top=chain.layers[0].filename,
            destination=destination,
            shallow=shallow,
            reuse=reuse,
            mirror_index=mirror.top_index,
            mirror_chain=mirror.chain,
        )
        self._start_job(disk, job)
        return OK

    def job_wait(self, name: str, target: str) -> Outcome:
        """A synchronous caller's wait (``virsh blockjob --wait``): qemu finishes its share
        of the disk's job and libvirt handles the events raised for the disk. A job that
        ended on its own since the last wait is reported as ended, once."""
        _, disk, job, _ = self._current_job(name, target)
        if disk is not None and job is None and disk.ended_unwaited:
            disk.ended_unwaited = False
            return OK
        outcome = self.job_step(name, target)
        if outcome.ok:
            for event in [e for e in self.events.pending if (e.domain, e.target) == (name, target)]:
                self.deliver(event.id)
        return outcome

    def job_step(self, name: str, target: str) -> Outcome:
        """qemu finishes its share of the disk's job and raises the event (not yet handled)."""
        domain, disk, job, problem = self._current_job(name, target)
        if domain is None or disk is None:
            return problem
        if job is None:
            return _fail(OpError.NO_JOB, f"no active block job on disk '{target}'")
        if job.state is not JobState.RUNNING:
            return OK
        # qemu knows the chain it opened; libvirt's cache (maybe lost meanwhile) plays no part.
        if job.kind in (JobKind.PULL, JobKind.COMMIT):
            rewritten = job.top if job.kind is JobKind.PULL else job.parent
            needs_rewrite = job.removed if job.kind is JobKind.PULL else rewritten is not None
            detached = rewritten is not None and self._lock_key(rewritten) in disk.detached_files
            if needs_rewrite and rewritten is not None and not detached:
                try:
                    self._rewrite_backing(rewritten, job.base, job.base_format)
                except (OSError, ValueError, HeaderRejected):
                    # The image changed under qemu: its job fails rather than completes.
                    job.state = JobState.FAILED
                    self.events.raise_event(job, EventType.FAILED)
                    return OK
                self._files_changed(rewritten, "rewritten-by-a-job", excluding=disk)
            self._completed_in_qemu(disk, job)
        else:
            job.state = JobState.READY
            self.events.raise_event(job, EventType.READY)
        return OK

    def _completed_in_qemu(self, disk: LiveDisk, job: BlockJob) -> None:
        """qemu changed the files; until libvirt handles the event its cache lags behind."""
        job.state = JobState.COMPLETED
        self.events.raise_event(job, EventType.COMPLETED)
        if disk.chain is not None and disk.stale_reason is None:
            disk.stale_reason = "completion-event-pending"

    def deliver(self, event_id: int) -> Outcome:
        """libvirt handles one pending event (qemuProcessHandleBlockJob / qemuBlockJob*)."""
        try:
            event = self.events.take(event_id)
        except KeyError:
            return _fail(OpError.NO_EVENT, f"no pending event {event_id}")
        self._handle(event)
        return OK

    def deliver_all(self, order: Callable[[list[JobEvent]], list[JobEvent]] | None = None) -> int:
        """Delivers every pending event, in qemu's order or in the order ``order`` gives."""
        pending = list(self.events.pending)
        for event in order(pending) if order else pending:
            self.deliver(event.id)
        return len(pending)

    def block_job_pivot(self, name: str, target: str) -> Outcome:
        """virDomainBlockJobAbort(PIVOT): switch to the new image once libvirt saw READY."""
        domain, disk, job, problem = self._current_job(name, target)
        if domain is None or disk is None:
            return problem
        not_ready = _fail(OpError.JOB_NOT_READY, f"block job on '{target}' is not ready yet")
        if job is not None and not job.pivot and self.rules.pivot_asks_ready_first:
            return not_ready
        if job is None or job.kind not in (JobKind.COPY, JobKind.ACTIVE_COMMIT):
            return _fail(OpError.NO_JOB, f"no active block copy or active commit on '{target}'")
        if not job.pivot:
            return not_ready
        return self._complete_pivot(domain, disk, job)

    def block_job_abort(self, name: str, target: str) -> Outcome:
        """virDomainBlockJobAbort: cancel; a copy leaves its destination, the chain unchanged."""
        domain, disk, job, problem = self._current_job(name, target)
        if domain is None or disk is None:
            return problem
        if job is None:
            return _fail(OpError.NO_JOB, f"no active block job on disk '{target}'")
        if job.state is JobState.COMPLETED:
            return _fail(OpError.NO_JOB, f"block job on '{target}' has already completed")
        job.state = JobState.ABORTED
        self.events.pending = [event for event in self.events.pending if event.job != job.id]
        self._finish_job(disk, job)
        return OK

    # -- faults -------------------------------------------------------------------------

    def delete_file(self, path: str) -> Outcome:
        key = self._lock_key(path)
        try:
            self.storage.remove(path)
        except OSError as error:
            return _fail(OpError.FILE_MISSING, f"cannot delete '{path}': {error.strerror}")
        self._detach_from_qemu(key)
        self._files_changed(path, "file-deleted")
        return OK

    def make_unreadable(self, path: str) -> Outcome:
        self.storage.unreadable.add(path)
        self._files_changed(path, "file-unreadable")
        return OK

    def replace_file(self, path: str, content: bytes) -> Outcome:
        """The file's content changes in place: qemu's descriptors see it (a deleted file
        returns as a new one, which they do not)."""
        self.storage.write(path, content)
        self._files_changed(path, "file-replaced")
        return OK

    def _detach_from_qemu(self, key: str) -> None:
        """The file with lock key ``key`` left its path: qemu nodes that have it open keep it,
        and a file made there later is another one."""
        for domain in self.domains.values():
            for disk in domain.live or ():
                writes, reads = self._disk_files(disk)
                if key in writes or key in reads:
                    disk.detached_files.add(key)

    def rewrite_header(self, path: str, backing: str | None, backing_format: str | None) -> Outcome:
        """A qcow2 file's backing name and format changed behind libvirt's back."""
        if self.storage.kind(path) is None:
            return _fail(OpError.FILE_MISSING, f"'{path}': no such file")
        if not self._is_qcow2(path):
            return _fail(OpError.UNSUPPORTED, f"only a qcow2 header can be rewritten: '{path}'")
        try:
            self._rewrite_backing(path, backing, backing_format)
        except (OSError, ValueError, HeaderRejected) as error:
            return _fail(OpError.FILE_MISSING, f"cannot rewrite '{path}': {error}")
        self._files_changed(path, "header-rewritten")
        return OK

    # -- observation --------------------------------------------------------------------

    def chain(self, name: str, target: str) -> Chain | None:
        """The chain libvirt caches for a running domain's disk (None: not cached)."""
        domain = self.domains.get(name)
        disk = domain.live_disk(target) if domain else None
        return disk.chain if disk else None

    def open_for_writing(self) -> set[str]:
        """Files a simulated qemu holds open for writing now."""
        writing: set[str] = set()
        for domain in self.domains.values():
            for disk in domain.live or ():
                if disk.config.path and disk.config.type in (DiskType.FILE, DiskType.BLOCK):
                    writing.add(disk.config.path)
        for job in self.jobs.values():
            if job.state in (JobState.RUNNING, JobState.READY):
                if job.kind in (JobKind.COMMIT, JobKind.ACTIVE_COMMIT) and job.base:
                    writing.add(job.base)
                if job.kind is JobKind.COPY and job.destination:
                    writing.add(job.destination)
        return writing

    def violations(self) -> list[Violation]:
        """Cached chains that differ from a fresh probe outside a documented window."""
        found = []
        for domain in self.domains.values():
            for disk in domain.live or ():
                if disk.chain is None or disk.stale_reason is not None:
                    continue
                if _shape_names(disk.chain) & self.storage.unreadable:
                    continue  # made unreadable behind libvirt's back: the cache keeps its view
                if disk.config.type not in (DiskType.FILE, DiskType.BLOCK):
                    continue
                if self.rules.user_backing_store and _user_chain(disk.config):
                    continue
                fresh = self.fresh_chain(disk.config)
                cached = _shape(disk.chain)
                if isinstance(fresh, ChainError):
                    found.append(Violation(domain.name, disk.config.target, cached, fresh.code))
                elif _shape(fresh) != cached:
                    found.append(Violation(domain.name, disk.config.target, cached, _shape(fresh)))
        return found

    # -- internals ----------------------------------------------------------------------

    def _refuses_as_in_chain(self, disk: LiveDisk, path: str) -> bool:
        """A reused snapshot overlay or copy destination already in the disk's chain. With
        image locks libvirt has no such check: qemu refuses to open the file for writing."""
        if self.rules.image_locks or disk.chain is None:
            return False
        return path in _shape_names(disk.chain)

    def _lock_conflict(
        self,
        writes: set[str],
        reads: set[str],
        excluding: tuple[LiveDisk, ...] = (),
        starting: tuple[LiveDisk, ...] = (),
    ) -> Outcome | None:
        """qemu's image locks: the files a new node writes or reads, against every running disk
        and the ``starting`` disks of a domain not running yet.

        A file written by one node cannot be opened by another; a file read by
        one node cannot be written by another. Read-only sharing is allowed.
        """
        if not self.rules.image_locks:
            return None
        written: set[str] = set()
        opened: set[str] = set()
        running = [disk for domain in self.domains.values() for disk in domain.live or ()]
        for disk in [*running, *starting]:
            if any(disk is other for other in excluding):
                continue
            disk_writes, disk_reads = self._disk_files(disk)
            written |= disk_writes
            opened |= disk_writes | disk_reads
        canonical = self._lock_key
        for path in sorted(writes):
            if canonical(path) in opened:
                return _locked(path, shared=False)
        for path in sorted(reads):
            if canonical(path) in written:
                return _locked(path, shared=True)
        return None

    def _disk_files(self, disk: LiveDisk) -> tuple[set[str], set[str]]:
        """The files a running disk's qemu nodes write and only read, canonical."""
        canonical = self._lock_key
        local = disk.config.type in (DiskType.FILE, DiskType.BLOCK)
        if not local or not disk.config.path:
            return set(), set()
        names = [layer.filename for layer in disk.chain.layers] if disk.chain else []
        names = names or [disk.config.path]
        writable = _writable(disk.config)
        writes = {canonical(names[0])} if writable else set()
        reads = {canonical(name) for name in (names[1:] if writable else names)}
        job = self.jobs.get(disk.job) if disk.job is not None else None
        if job is not None and job.state is JobState.RUNNING:
            # A commit writes its base; a copy writes its destination.
            for path in (job.base if job.kind is not JobKind.PULL else None, job.destination):
                if path:
                    writes.add(canonical(path))
        return writes, reads - writes

    def _is_qcow2(self, path: str) -> bool:
        try:
            image = self.storage.open(path)
        except OSError:
            return False
        try:
            return image.read(0, 4) == qcow2.MAGIC
        finally:
            image.close()

    def _qemu_open_refusal(self, disks: list[LiveDisk]) -> Outcome | None:
        """qemu opens every layer with the format libvirt gives it: a layer said to be qcow2
        whose file is not (replaced behind libvirt's back) makes the open fail."""
        for disk in disks:
            local = disk.config.type in (DiskType.FILE, DiskType.BLOCK)
            for layer in disk.chain.layers if disk.chain and local else ():
                refused = self._not_in_format(layer.filename, layer.format)
                if refused is not None:
                    return refused
        return None

    def _reused_file_refused(
        self, path: str, fmt: str, reads: set[str], writes: bool = True
    ) -> Outcome | None:
        """qemu opening a reused overlay or copy destination (for writing, unless not
        ``writes``) and what it records below (for reading): a lock held on one of them,
        or a file not in ``fmt``."""
        opened = ({path}, reads) if writes else (set(), reads | {path})
        return self._lock_conflict(*opened) or self._not_in_format(path, fmt)

    def _not_in_format(self, path: str, fmt: str) -> Outcome | None:
        """qemu opening ``path`` as ``fmt`` (only qcow2 has a magic it checks)."""
        if not self.rules.qemu_checks_layer_formats or fmt != "qcow2" or self._is_qcow2(path):
            return None
        return _fail(OpError.NOT_IN_FORMAT, "Image is not in qcow2 format")

    def _lock_key(self, path: str) -> str:
        """What qemu's locks are held on: the file itself, whatever name reaches it."""
        try:
            return self.storage.canonical(path)
        except OSError:
            return os.path.abspath(path)

    def _domain_lock_conflict(self, live: list[LiveDisk]) -> Outcome | None:
        """A starting domain's disks, against each other and against every running domain."""
        for position, disk in enumerate(live):
            problem = self._lock_conflict(*self._disk_files(disk), starting=tuple(live[:position]))
            if problem is not None:
                return problem
        return None

    def _check_disks(self, disks: list[DiskConfig]) -> Outcome | None:
        targets = set()
        for config in disks:
            if config.target in targets:
                return _fail(OpError.DISK_EXISTS, f"target {config.target} duplicated")
            targets.add(config.target)
            known = config.format is None or config.format in DEFINABLE_FORMATS
            if self.rules.rejects_unknown_format_names and not known:
                return _fail(
                    ErrorCode.UNKNOWN_FORMAT.value,
                    f"unsupported configuration: unknown driver format value '{config.format}'",
                )
        return None

    def _running(self, name: str) -> tuple[Domain | None, Outcome]:
        domain = self.domains.get(name)
        if domain is None:
            return None, _no_domain(name)
        if not domain.running:
            return None, _fail(OpError.NOT_RUNNING, f"domain '{name}' is not running")
        return domain, OK

    def _job_disk(
        self, name: str, target: str, empty_ok: bool = False
    ) -> tuple[Domain, LiveDisk | None, Outcome]:
        domain, problem = self._running(name)
        if domain is None:
            return Domain(name, False, []), None, problem
        disk = domain.live_disk(target)
        if disk is None:
            return domain, None, _no_disk(name, target)
        if disk.job is not None:
            return (
                domain,
                None,
                _fail(OpError.JOB_ACTIVE, f"disk '{target}' already has an active block job"),
            )
        if disk.config.type not in (DiskType.FILE, DiskType.BLOCK):
            return domain, None, _fail(OpError.UNSUPPORTED, "block jobs need a local disk")
        if not disk.config.path and not empty_ok:
            return domain, None, _no_source(target)
        return domain, disk, OK

    def _current_job(
        self, name: str, target: str
    ) -> tuple[Domain | None, LiveDisk | None, BlockJob | None, Outcome]:
        """A running domain's disk and the block job on it, if any."""
        domain, problem = self._running(name)
        if domain is None:
            return None, None, None, problem
        disk = domain.live_disk(target)
        if disk is None:
            return domain, None, None, _no_disk(name, target)
        job = self.jobs.get(disk.job) if disk.job is not None else None
        return domain, disk, job, OK

    def _chain_for_job(self, domain: Domain, disk: LiveDisk) -> tuple[Chain | None, Outcome]:
        """The chain a job validates against: the cache, probed first if it is empty
        (or always, when the rules keep no cache)."""
        if disk.chain is None or not self.rules.reuses_cache:
            outcome = self.determine_disk_chain(domain, disk, False)
            if not outcome.ok:
                return None, outcome
        assert disk.chain is not None
        self._note_cache_read(domain, disk)
        return disk.chain, OK

    def _note_cache_read(self, domain: Domain, disk: LiveDisk) -> None:
        if not self.track_staleness or disk.chain is None:
            return
        fresh = self.fresh_chain(disk.config)
        if isinstance(fresh, ChainError) or _shape(fresh) != _shape(disk.chain):
            self.counters.stale_operations += 1

    def _start_job(self, disk: LiveDisk, job: BlockJob) -> None:
        disk.job = job.id
        disk.ended_unwaited = False
        if job.destination is not None:  # qemu opens what is at the path now
            disk.detached_files.discard(self._lock_key(job.destination))

    def _new_job(self, kind: JobKind, domain: str, target: str, **details: object) -> BlockJob:
        job = BlockJob(self._next_job, kind, domain, target, **details)  # type: ignore[arg-type]
        self._next_job += 1
        self.jobs[job.id] = job
        return job

    def _handle(self, event: JobEvent) -> None:
        job = self.jobs.get(event.job)
        domain = self.domains.get(event.domain)
        disk = domain.live_disk(event.target) if domain else None
        if job is None or domain is None or disk is None:
            return
        if event.type is EventType.READY:
            job.pivot = True
            return
        if event.type is not EventType.COMPLETED:
            self._finish_job(disk, job)
            return
        if disk.stale_reason == "completion-event-pending":
            disk.stale_reason = None
        if self.rules.models_jobs:
            self._model_completion(domain, disk, job)
        elif job.kind.value in self.rules.reprobe_after:
            # The 2012 handler: re-probe, ignoring what the call returns.
            self.determine_disk_chain(domain, disk, True)
        elif disk.chain is not None:
            disk.stale_reason = f"no-reprobe-after-{job.kind.value}"
        self._finish_job(disk, job)

    def _model_completion(self, domain: Domain, disk: LiveDisk, job: BlockJob) -> None:
        """qemuBlockJobProcessEventCompleted*: the new chain from the old, nothing probed."""
        chain = disk.chain
        if chain is None:
            return
        # The images taken out of the chain are closed by qemu and their access revoked.
        self.granted.get(domain.name, set()).difference_update(job.removed)
        names = [layer.filename for layer in chain.layers]
        if job.kind is JobKind.PULL:
            if job.base is None:
                layers = chain.layers[:1]
                terminated = self.rules.pull_terminates
            else:
                # The base lies below the top, which may be a file of the same name.
                layers = chain.layers[:1] + chain.layers[names.index(job.base, 1) :]
                terminated = chain.terminated
            disk.chain = Chain(layers, terminated)
            if domain.persistent:
                self._follow_pull_in_definition(domain, chain, disk.chain)
        elif job.kind is JobKind.COMMIT:
            top_at = names.index(job.top, 1)
            base_at = names.index(job.base, top_at + 1) if job.base else len(names) - 1
            disk.chain = Chain(chain.layers[:top_at] + chain.layers[base_at:], chain.terminated)
            if job.delete:
                self._delete_removed(job)

    def _follow_pull_in_definition(self, domain: Domain, before: Chain, after: Chain) -> None:
        """S18: a user <backingStore> chain in the persistent definition that matched the live
        chain becomes the new one; one that did not is dropped (detected at the next start)."""
        top = before.layers[0].filename
        updated = []
        for config in domain.config:
            if config.path != top or not (config.backing or config.backing_terminated):
                updated.append(config)
                continue
            given = tuple((element.path, element.format) for element in config.backing)
            live = tuple((layer.filename, layer.format) for layer in before.layers[1:])
            if given == live[: len(given)]:
                backing = tuple(
                    BackingSpec(layer.filename, layer.format) for layer in after.layers[1:]
                )
                updated.append(evolve(config, backing=backing, backing_terminated=after.terminated))
            else:
                updated.append(evolve(config, backing=(), backing_terminated=False))
        domain.config = updated

    def _complete_pivot(self, domain: Domain, disk: LiveDisk, job: BlockJob) -> Outcome:
        chain = disk.chain
        if job.kind is JobKind.COPY:
            assert job.destination is not None
            mirror = LiveDisk(
                _mirror_config(disk.config, job.destination),
                chain=job.mirror_chain,
                top_index=job.mirror_index,
            )
            if self.rules.models_jobs:
                if mirror.chain is not None:
                    # Detected when the copy started: what changed since is not seen.
                    fresh = self.fresh_chain(mirror.config)
                    if isinstance(fresh, ChainError) or _shape(fresh) != _shape(mirror.chain):
                        mirror.stale_reason = "mirror-chain-detected-at-copy-start"
                elif chain is None:
                    outcome = self.determine_disk_chain(domain, mirror, False)
                    if not outcome.ok:
                        return outcome
                elif job.shallow and not job.reuse:
                    top = Layer(job.destination, "qcow2", index=mirror.top_index)
                    mirror.chain = Chain((top, *chain.layers[1:]), chain.terminated)
                    mirror.stale_reason = disk.stale_reason  # the inherited layers' window
                else:
                    # A full copy, or a reused destination: libvirt 9.0 neither inherits
                    # nor detects what the destination's header records below it.
                    top = Layer(job.destination, "qcow2", index=mirror.top_index)
                    mirror.chain = Chain((top,), True)
                    # Nothing is probed: a fault on the destination while the job ran stays.
                    mirror.stale_reason = disk.stale_reason
                    fresh = self.fresh_chain(mirror.config)
                    if job.reuse and (isinstance(fresh, ChainError) or len(fresh) > 1):
                        mirror.stale_reason = "reused-destination-backing-not-detected"
            else:
                outcome = self.determine_disk_chain(domain, mirror, False)
                if not outcome.ok:
                    return outcome
            self._revoke(domain.name, disk, whole_chain=True)
            disk.config = mirror.config
            disk.chain = mirror.chain
            disk.top_index = mirror.top_index
            disk.stale_reason = mirror.stale_reason
            self._grant(domain.name, disk)
        else:
            assert job.base is not None and chain is not None
            names = [layer.filename for layer in chain.layers]
            base_at = names.index(job.base, 1)
            base = chain.layers[base_at]
            old_top = disk.config.path
            disk.config = evolve(disk.config, path=base.filename, format=base.format, backing=())
            disk.chain = Chain(chain.layers[base_at:], chain.terminated)
            disk.top_index = base.index
            # The images above base leave qemu and lose their access, as in a completed commit.
            self.granted.get(domain.name, set()).difference_update(job.removed)
            if domain.persistent:
                # qemuBlockJobRewriteConfigDiskSource: only if the config's top is the old top.
                domain.config = [
                    evolve(config, path=base.filename, format=base.format, backing=())
                    if config.target == disk.config.target and config.path == old_top
                    else config
                    for config in domain.config
                ]
            if job.delete:
                self._delete_removed(job)
        job.state = JobState.COMPLETED
        self._finish_job(disk, job)
        return OK

    def _delete_removed(self, job: BlockJob) -> None:
        """VIR_DOMAIN_BLOCK_COMMIT_DELETE: other chains naming a deleted image go stale."""
        for path in job.removed:
            with contextlib.suppress(OSError):
                self.storage.remove(path)
            self._files_changed(path, "file-deleted")

    def _finish_job(self, disk: LiveDisk, job: BlockJob) -> None:
        self.jobs.pop(job.id, None)
        if disk.job == job.id:
            disk.job = None

    def _recorded_backing(self, path: str, fmt: str) -> str | None:
        """virStorageFileGetBackingStoreStr: the backing name a qcow2 header records."""
        if fmt != "qcow2":
            return None
        try:
            image = self.storage.open(path)
            try:
                data = image.read(0, self.profile.header_bound or LIBVIRT_MAX_HEADER)
            finally:
                image.close()
            info = qcow2.decode_libvirt(Header.of(data), self.profile.read_rules)
        except (OSError, HeaderRejected):
            return None
        return decode_c_name(info.backing_name) if info.backing_name else None

    def _rewrite_backing(self, path: str, backing: str | None, fmt: str | None) -> None:
        """What qemu writes into an overlay's header when its backing changes, through the
        descriptor it holds (a file made unreadable since is written all the same)."""
        qcow2.rewrite_backing(self.storage.inner, path, backing, fmt)

    def _virtual_size(self, disk: LiveDisk) -> int:
        if disk.chain is not None and disk.chain.layers[0].virtual_size:
            return disk.chain.layers[0].virtual_size
        return DEFAULT_SIZE

    def _files_changed(self, path: str, reason: str, excluding: LiveDisk | None = None) -> None:
        """Files changed behind libvirt's back: caches that name them keep their old view,
        and so does a disk whose job will pivot to them."""
        destinations = {
            (job.domain, job.target) for job in self.jobs.values() if job.destination == path
        }
        for domain in self.domains.values():
            for disk in domain.live or ():
                if disk is excluding:
                    continue
                named = disk.chain is not None and path in _shape_names(disk.chain)
                if named or (domain.name, disk.config.target) in destinations:
                    disk.stale_reason = reason

    def _walk(self, disk: LiveDisk) -> Iterator[str]:
        """virDomainDiskDefForeachPath: the top, then each known backing file."""
        if disk.config.type not in (DiskType.FILE, DiskType.BLOCK) or not disk.config.path:
            return
        yield disk.config.path
        if disk.chain is not None:
            for layer in disk.chain.layers[1:]:
                if layer.type in (LayerType.FILE, LayerType.BLOCK):
                    yield layer.filename

    def _grant(self, name: str, disk: LiveDisk) -> None:
        self.granted.setdefault(name, set()).update(self._walk(disk))

    def _revoke(self, name: str, disk: LiveDisk, *, whole_chain: bool) -> None:
        granted = self.granted.get(name)
        if granted is None:
            return
        paths = list(self._walk(disk)) if whole_chain else [disk.config.path or ""]
        granted.difference_update(paths)


def _locked(path: str, *, shared: bool) -> Outcome:
    lock = 'shared "write"' if shared else '"write"'
    return _fail(
        OpError.IMAGE_LOCKED,
        f"Failed to get {lock} lock\nIs another process using the image [{path}]?",
    )


def _relative_source(path: str) -> ChainError:
    """A local source named relatively: the daemon resolves it against its own directory, /."""
    return ChainError(
        ErrorCode.NOT_FOUND,
        f"Cannot access storage file '{path}' (as uid:0, gid:0): No such file or directory",
    )


def _lookup(
    chain: Chain, name: str, target: str, below: int | None, indexes: bool = True
) -> int | None:
    """virStorageSourceChainLookup: a layer by path, relative name or ``vdX[N]`` index.

    With ``indexes`` (modern libvirt) a relative name also finds the layer it names from
    the directory of the layer above (virFindBackingFile), whatever name the chain keeps.
    """
    start = 0 if below is None else below + 1
    index = _parse_index(name, target) if indexes else None
    for position in range(start, len(chain.layers)):
        layer = chain.layers[position]
        if index is not None:
            if layer.index == index:  # the top too: vda[1] can name the active layer
                return position
        elif name in (layer.filename, layer.relative_path) or (
            indexes and position > 0 and _names_from_parent(chain, position, name)
        ):
            return position
    return None


def _not_in_chain(name: str, target: str, beneath: str | None, indexes: bool) -> str:
    """virStorageSourceChainLookup's message for a name, or index, it did not find."""
    addressed = _chain_index(name) if indexes else None
    if addressed is not None and addressed[0] != target:
        # virStorageFileParseChainIndex: another disk's index names nothing here.
        return f"requested target '{addressed[0]}' does not match target '{target}'"
    index = _parse_index(name, target) if indexes else None
    if index is not None:
        return f"could not find backing store index '{index}' in chain for '{target}'"
    if beneath is not None:
        return f"could not find image '{name}' beneath '{beneath}' in chain for '{target}'"
    return f"could not find image '{name}' in chain for '{target}'"


def _names_from_parent(chain: Chain, position: int, name: str) -> bool:
    layer = chain.layers[position]
    if os.path.isabs(name) or layer.type is not LayerType.FILE:
        return False
    parent = os.path.dirname(chain.layers[position - 1].filename)
    return os.path.realpath(os.path.join(parent, name)) == os.path.realpath(layer.filename)


def _chain_index(name: str) -> tuple[str, int] | None:
    """``vdX[N]``: the disk target and the index. libvirt's index 0 means "not an index":
    ``vda[0]`` is looked up as a name (seen on 9.0, whichever disk it names)."""
    if name.endswith("]") and "[" in name:
        target, _, number = name[:-1].partition("[")
        if number.isdigit() and int(number) > 0:
            return target, int(number)
    return None


def _parse_index(name: str, target: str) -> int | None:
    """The index ``name`` addresses in ``target``'s chain, if it is one."""
    addressed = _chain_index(name)
    return addressed[1] if addressed is not None and addressed[0] == target else None


def _user_chain(config: DiskConfig) -> bool:
    """The definition gives a <backingStore>: elements, or only the empty terminator."""
    return bool(config.backing) or config.backing_terminated


def _commit_base_problem(chain: Chain, top_at: int, base_at: int, shallow: bool) -> Outcome:
    """What is wrong with a commit's base once top and base are found: below a terminated
    chain's bottom layer lies only the terminator, and a shallow commit's base must lie
    right below its top. libvirt names the disk's source here, not its target."""
    top_name, source = chain.layers[top_at].filename, chain.layers[0].filename
    if base_at == len(chain):
        return _fail(
            OpError.TOP_HAS_NO_BACKING,
            f"top '{top_name}' in chain for '{source}' has no backing file",
        )
    if shallow and base_at != top_at + 1:
        return _fail(
            OpError.BASE_NOT_BELOW_TOP,
            f"base '{chain.layers[base_at].filename}' is not immediately below "
            f"'{top_name}' in chain for '{source}'",
        )
    return OK


def _only_qcow2_rewritten(path: str) -> Outcome:
    return _fail(
        OpError.UNSUPPORTED,
        f"the simulated qemu rewrites qcow2 headers only, and '{path}' would need rewriting",
    )


def _shape(chain: Chain) -> tuple[str, ...]:
    """A chain as the invariant compares it: each layer's name and format, and its end."""
    end = "terminated" if chain.terminated else "unknown"
    return (*(f"{layer.filename}:{layer.format}" for layer in chain.layers), end)


def _shape_names(chain: Chain) -> set[str]:
    return {layer.filename for layer in chain.layers}


NULL_SOURCE = "<null>"
"""How libvirt's messages print an empty drive's source."""


def _defined_layers(config: DiskConfig) -> tuple[Layer, ...]:
    """The chain a definition gives: its source and the user's <backingStore> elements."""
    top = Layer(config.path or NULL_SOURCE, config.format or "raw", _layer_type(config))
    return (top, *(Layer(element.path, element.format) for element in config.backing))


def _mirror_config(config: DiskConfig, destination: str) -> DiskConfig:
    """The disk as a block copy's destination makes it: a qcow2 image, nothing given below."""
    return evolve(config, path=destination, format="qcow2", backing=())


def _writable(config: DiskConfig) -> bool:
    """qemu opens a disk's active layer for writing; a cdrom or floppy only for reading."""
    return config.device == "disk"


def _layer_type(config: DiskConfig) -> LayerType:
    return LayerType.BLOCK if config.type is DiskType.BLOCK else LayerType.FILE


def _no_domain(name: str) -> Outcome:
    return _fail(OpError.NO_DOMAIN, f"no domain with matching name '{name}'")


def _relative_copy_destination(destination: str) -> Outcome:
    return _fail(OpError.INVALID_PATH, f"copy destination '{destination}' must be absolute")


def _format_node(index: int) -> str:
    """The name libvirt 9.0 gives the format node of the source numbered ``index``."""
    return f"libvirt-{index}-format"


def _no_node_for_stream(index: int) -> Outcome:
    node = _format_node(index)
    return _fail(
        OpError.MEDIUM_NOT_IN_QEMU,
        f"unable to execute QEMU command 'block-stream': "
        f"Cannot find device='{node}' nor node-name='{node}'",
    )


def _no_node_for_commit(index: int) -> Outcome:
    node = _format_node(index)
    message = f"unable to execute QEMU command 'block-commit': Device '{node}' not found"
    return _fail(OpError.MEDIUM_NOT_IN_QEMU, message)


def _no_size_for_node(index: int) -> Outcome:
    """libvirt asks qemu the size of a copy's or snapshot's disk before it starts."""
    node = _format_node(index)
    message = f"failed to update capacity data for block node '{node}'"
    return _fail(OpError.MEDIUM_NOT_IN_QEMU, message)


def _no_source(target: str) -> Outcome:
    return _fail(OpError.NO_SOURCE, f"disk '{target}' has no source (an empty drive)")


def _in_chain(path: str, target: str) -> Outcome:
    return _fail(OpError.IN_CHAIN, f"'{path}' is already in the backing chain of disk '{target}'")


def _snapshot_disk_missing(targets: list[str], target: str) -> Outcome | None:
    """virDomainSnapshotAlignDisks: the snapshot names one disk, and a domain without
    disks has fewer than that."""
    if not targets:
        return _fail(OpError.UNSUPPORTED, "too many disk snapshot requests for domain")
    if target not in targets:
        return _fail(OpError.NO_DISK, f"no disk named '{target}'")
    return None


def _no_disk(name: str, target: str) -> Outcome:
    return _fail(OpError.NO_DISK, f"disk '{target}' not found in domain '{name}'")


__all__ = [
    "BackingSpec",
    "Counters",
    "DiskConfig",
    "DiskType",
    "Domain",
    "FaultyStorage",
    "Hypervisor",
    "LiveDisk",
    "OpError",
    "Outcome",
    "Violation",
]
