"""Mutants of the reference: realistic defects that the catalogue must catch.

Each mutant is the reference with one defect put in: a libvirt bug from
``reference/libvirt-rules.md`` brought back, or an obvious wrong turn an
implementer could take. A defect in a rule is a changed field of the profile;
a defect in code is a wrong variant of one reference function, written out in
this module, that replaces the reference function only while the mutant answers
a call. Between calls (and for an oracle running in the same process) the
reference is intact.

A mutant runs under each profile it names and is judged by that profile's
expectations: a case that fails (or breaks) against the mutant, and passes
against the reference, kills it.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import conformance.adapters.reference as reference_adapter
import simulator.backing as backing_names
from conformance.adapters.base import AdapterError
from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import Case
from conformance.runner import Runner, Status
from simulator.blockjobs import BlockJob
from simulator.formats.header import HeaderInfo
from simulator.hypervisor import (
    NON_BACKING_FORMATS,
    OK,
    DiskConfig,
    DiskType,
    Domain,
    Hypervisor,
    LiveDisk,
    Outcome,
)
from simulator.model import Chain, ChainError, Layer, LayerType
from simulator.prober import PROBE, _End, _LibvirtWalk, _Pending
from simulator.profiles import (
    QEMU_DRIVER_MAX_DEPTH,
    DetectionRule,
    IndexRule,
    LoopRule,
    NetworkBackingRule,
    Profile,
    RelativeNameRule,
    UnrecordedBackingRule,
)
from simulator.storage import FileKind

CACHE_PROFILES = ("seed-v2", "libvirt-1.0", "libvirt-modern")
"""The profiles with a simulated hypervisor (the qemu profile only probes)."""
RUNAWAY_DEPTH = 10_000
"""Layers a walk may visit before a mutant is taken to hang (the catalogue's deepest is 1000)."""


class Realisation(StrEnum):
    """How a mutant's defect is put into the reference."""

    RULE = "rule"
    """A profile field replaced (dataclasses.replace)."""
    CODE = "code"
    """A reference function swapped for a wrong variant while the mutant answers."""
    RULE_AND_HOST = "rule+host"
    """A profile field replaced, on a simulated host where the rule makes a difference."""


class RunawayWalk(Exception):
    """A chain walk that does not end: the mutant hangs, as the implementation would."""


@dataclass(frozen=True)
class Patch:
    """One attribute of a reference module or class, replaced by a wrong variant."""

    owner: Any
    """The module or class that holds the attribute."""
    attribute: str
    replacement: Any


_ABSENT = object()


@contextlib.contextmanager
def applied(patches: Sequence[Patch]) -> Iterator[None]:
    """The patches in place for the duration of the block, then the originals put back."""
    originals = [
        (patch.owner, patch.attribute, vars(patch.owner).get(patch.attribute, _ABSENT))
        for patch in patches
    ]
    try:
        for patch in patches:
            setattr(patch.owner, patch.attribute, patch.replacement)
        yield
    finally:
        for owner, attribute, original in reversed(originals):
            if original is _ABSENT:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)


@dataclass(frozen=True)
class Mutant:
    """One defect of the reference, where it comes from, and the profiles it applies to."""

    id: str
    defect: str
    """What the mutant does wrong, in a sentence."""
    provenance: str
    """The libvirt commit or bug it brings back, or the wrong turn it takes."""
    profiles: tuple[str, ...]
    rules: Callable[[Profile], Profile] | None = None
    patches: tuple[Patch, ...] = ()
    cgroup_devices: bool = True
    """Whether the simulated host has the cgroup devices controller."""
    note: str = ""
    """What a reader of the score should know (e.g. where the protocol cannot see the defect)."""

    @property
    def realisation(self) -> Realisation:
        if self.patches:
            return Realisation.CODE
        if not self.cgroup_devices:
            return Realisation.RULE_AND_HOST
        return Realisation.RULE

    def profile(self, base: Profile) -> Profile:
        """The rules the mutant runs under, given the base profile's."""
        return self.rules(base) if self.rules is not None else base


# -- rule changes -----------------------------------------------------------------------------


def _rules(**changes: Any) -> Callable[[Profile], Profile]:
    """Profile fields replaced."""
    return lambda profile: replace(profile, **changes)


def _cache(**changes: Any) -> Callable[[Profile], Profile]:
    """CacheRules fields replaced."""
    return lambda profile: replace(profile, cache=replace(profile.cache, **changes))


def _read(**changes: Any) -> Callable[[Profile], Profile]:
    """LibvirtReadRules fields replaced."""
    return lambda profile: replace(profile, read_rules=replace(profile.read_rules, **changes))


def _reprobe_without(job: str) -> Callable[[Profile], Profile]:
    """No forced re-probe when a job of this kind completes."""
    return lambda profile: replace(
        profile,
        cache=replace(profile.cache, reprobe_after=profile.cache.reprobe_after - {job}),
    )


# -- the reference functions the wrong variants wrap ------------------------------------------
# Taken at import, before any patch: a wrong variant always calls the reference itself.

REFERENCE_DETERMINE = Hypervisor.determine_disk_chain
REFERENCE_DETERMINE_MODERN = Hypervisor._determine_modern
REFERENCE_SNAPSHOT = Hypervisor.snapshot
REFERENCE_DESTROY = Hypervisor.destroy
REFERENCE_RESTART = Hypervisor.daemon_restart
REFERENCE_COMPLETE_PIVOT = Hypervisor._complete_pivot
REFERENCE_BLOCK_PULL = Hypervisor.block_pull
REFERENCE_BLOCK_COMMIT = Hypervisor.block_commit
REFERENCE_VALIDATE_DEPTH = Hypervisor._validate_depth
REFERENCE_VISIT = _LibvirtWalk._visit
REFERENCE_RUN = _LibvirtWalk.run
REFERENCE_RESOLVE_RELATIVE = backing_names.resolve_relative_libvirt
REFERENCE_PARSE_DISK = reference_adapter._disk


def _failure(error: ChainError) -> Outcome:
    return Outcome(-1, error.code.value, error.message)


# -- wrong variants: probing ------------------------------------------------------------------


def _visit_with_watchdog(
    self: _LibvirtWalk, pending: _Pending, depth: int, top: str
) -> _Pending | _End:
    """The reference's visit, stopped once a walk is deeper than any chain could be."""
    if depth > RUNAWAY_DEPTH:
        raise RunawayWalk(
            f"the chain walk from '{top}' was still going after {RUNAWAY_DEPTH} layers"
        )
    return REFERENCE_VISIT(self, pending, depth, top)


WATCHDOG = Patch(_LibvirtWalk, "_visit", _visit_with_watchdog)
"""Put in with every mutant, so that a walk that never ends reads as a hang."""


def _run_probing_the_top(self: _LibvirtWalk, path: str, format: str | None) -> Chain:
    """A top whose format is unspecified is probed, and the chain walked as what it looks like."""
    if format in (None, "none") and self.storage.kind(path) is FileKind.FILE:
        with contextlib.suppress(OSError):
            image = self.storage.open(path)
            try:
                format = self._detect(
                    self.prober.read_header(image, self.profile.header_bound), path
                )
            finally:
                image.close()
    return REFERENCE_RUN(self, path, format)


def _backing_format_never_recorded(self: _LibvirtWalk, info: HeaderInfo) -> str | None:
    """Every backing is probed, whatever format its overlay records."""
    return PROBE


def _resolve_relative_against_link_target(parent_path: str, relative: str) -> str:
    """The relative name is taken from the directory of the file a symlink points to."""
    return REFERENCE_RESOLVE_RELATIVE(os.path.realpath(parent_path), relative)


# -- wrong variants: determining the chain ----------------------------------------------------


def _determine_caching_forced_failure(
    self: Hypervisor, domain: Domain, disk: LiveDisk, force: bool
) -> Outcome:
    """A forced re-probe that fails keeps the old chain and says it succeeded."""
    previous = disk.chain
    outcome = REFERENCE_DETERMINE(self, domain, disk, force)
    if force and previous is not None and outcome.code is not None:
        disk.chain = previous
        return OK
    return outcome


def _determine_ignoring_force(
    self: Hypervisor, domain: Domain, disk: LiveDisk, force: bool
) -> Outcome:
    """A forced re-probe is treated as a plain one: a cached chain is returned as it is."""
    return REFERENCE_DETERMINE(self, domain, disk, False)


def _determine_opening_network_names(
    self: Hypervisor, domain: Domain, disk: LiveDisk, force: bool
) -> Outcome:
    """A network or volume disk's name is opened as a local file before anything else."""
    config = disk.config
    if config.path and config.type in (DiskType.NETWORK, DiskType.VOLUME):
        try:
            self.probe_chain(config.path, config.format)
        except ChainError as error:
            return _failure(error)
    return REFERENCE_DETERMINE_MODERN(self, domain, disk, force)


def _determine_terminating_network_disks(
    self: Hypervisor, domain: Domain, disk: LiveDisk, force: bool
) -> Outcome:
    """A network disk's one-element chain is marked as ending there."""
    outcome = REFERENCE_DETERMINE_MODERN(self, domain, disk, force)
    chain = disk.chain
    if outcome.ok and chain is not None and disk.config.type is DiskType.NETWORK:
        disk.chain = Chain(chain.layers, True)
    return outcome


def _determine_reading_non_backing_tops(
    self: Hypervisor, domain: Domain, disk: LiveDisk, force: bool
) -> Outcome:
    """A raw (or other non-backing) local disk goes through the prober like any other."""
    config = disk.config
    local = config.type in (DiskType.FILE, DiskType.BLOCK)
    if force:
        disk.chain = None
    if config.path and local and config.format in NON_BACKING_FORMATS and disk.chain is None:
        try:
            probed = self.probe_chain(config.path, config.format)
        except ChainError as error:
            return _failure(error)
        disk.chain = self._assign_detected(domain, disk, probed.layers, probed.terminated)
        return OK
    return REFERENCE_DETERMINE_MODERN(self, domain, disk, force)


def _determine_not_checking_non_backing_tops(
    self: Hypervisor, domain: Domain, disk: LiveDisk, force: bool
) -> Outcome:
    """A raw (or other non-backing) local disk is taken as it is named: nothing checks it exists."""
    config = disk.config
    local = config.type in (DiskType.FILE, DiskType.BLOCK)
    if force:
        disk.chain = None
    if config.path and local and config.format in NON_BACKING_FORMATS and disk.chain is None:
        kind = LayerType.BLOCK if config.type is DiskType.BLOCK else LayerType.FILE
        top = Layer(config.path, config.format, kind, index=disk.top_index)
        disk.chain = Chain((top,), True)
        return OK
    return REFERENCE_DETERMINE_MODERN(self, domain, disk, force)


_CHAINS_IN_DEFINITION: weakref.WeakKeyDictionary[Hypervisor, dict[tuple[str, str], Chain]] = (
    weakref.WeakKeyDictionary()
)
"""The chains a persistent definition kept from the domain's last run (per hypervisor)."""


def _destroy_keeping_chains_in_definition(self: Hypervisor, name: str) -> Outcome:
    """At stop, each disk's cached chain stays with the persistent definition."""
    domain = self.domains.get(name)
    if domain is not None and domain.persistent:
        kept = _CHAINS_IN_DEFINITION.setdefault(self, {})
        for disk in domain.live or ():
            if disk.chain is not None:
                kept[(name, disk.config.target)] = disk.chain
    return REFERENCE_DESTROY(self, name)


def _determine_reusing_definition_chain(
    self: Hypervisor, domain: Domain, disk: LiveDisk, force: bool
) -> Outcome:
    """At start, a chain the definition kept is taken as the cache: nothing is re-detected."""
    kept = _CHAINS_IN_DEFINITION.get(self, {}).get((domain.name, disk.config.target))
    starting = not domain.running and not force and disk.chain is None
    if starting and kept is not None and kept.layers[0].filename == disk.config.path:
        disk.chain = kept
    return REFERENCE_DETERMINE(self, domain, disk, force)


def _disk_without_terminator(spec: dict[str, Any]) -> DiskConfig:
    """The definition's disk as parsed when an empty <backingStore/> is not understood."""
    return replace(REFERENCE_PARSE_DISK(spec), backing_terminated=False)


# -- wrong variants: snapshots ----------------------------------------------------------------


def _snapshot_leaving_the_cache(
    self: Hypervisor,
    name: str,
    target: str,
    overlay: str,
    *,
    reuse: bool = False,
    fmt: str = "qcow2",
) -> Outcome:
    """The snapshot switches the disk to the overlay; the cached chain stays as it was."""
    domain = self.domains.get(name)
    disk = domain.live_disk(target) if domain is not None else None
    before = disk.chain if disk is not None else None
    outcome = REFERENCE_SNAPSHOT(self, name, target, overlay, reuse=reuse, fmt=fmt)
    if outcome.ok and disk is not None:
        disk.chain = before
    return outcome


def _snapshot_then_redetect(
    self: Hypervisor,
    name: str,
    target: str,
    overlay: str,
    *,
    reuse: bool = False,
    fmt: str = "qcow2",
) -> Outcome:
    """After the snapshot the chain is probed again from the overlay's header."""
    outcome = REFERENCE_SNAPSHOT(self, name, target, overlay, reuse=reuse, fmt=fmt)
    domain = self.domains.get(name)
    disk = domain.live_disk(target) if domain is not None else None
    if outcome.ok and domain is not None and disk is not None:
        self.determine_disk_chain(domain, disk, True)
    return outcome


def _snapshot_leaving_the_definition(
    self: Hypervisor,
    name: str,
    target: str,
    overlay: str,
    *,
    reuse: bool = False,
    fmt: str = "qcow2",
) -> Outcome:
    """A live snapshot moves the running disk to the overlay; the definition keeps the old top."""
    domain = self.domains.get(name)
    definition = list(domain.config) if domain is not None and domain.running else None
    outcome = REFERENCE_SNAPSHOT(self, name, target, overlay, reuse=reuse, fmt=fmt)
    if domain is not None and definition is not None:
        domain.config = definition
    return outcome


def _reuse_overlay_backing_not_read(self: Hypervisor, path: str, fmt: str) -> str | None:
    """The reused overlay's recorded backing name is never read."""
    return None


def _validate_depth_without_the_new_layer(
    self: Hypervisor, disk: LiveDisk, chain: Chain, add: int
) -> Outcome:
    """The depth check counts the chain as it is, not with the layer about to be added."""
    return REFERENCE_VALIDATE_DEPTH(self, disk, chain, 0)


# -- wrong variants: block jobs ---------------------------------------------------------------


def _block_pull_ignoring_base(
    self: Hypervisor, name: str, target: str, base: str | None = None
) -> Outcome:
    """The base is dropped: every pull streams the whole chain into the active layer."""
    return REFERENCE_BLOCK_PULL(self, name, target, None)


def _block_commit_with_flag_ignored(flag: str) -> Callable[..., Outcome]:
    """A block commit that accepts ``flag`` and then acts as if it had not been given."""

    def block_commit(
        self: Hypervisor,
        name: str,
        target: str,
        top: str | None = None,
        base: str | None = None,
        **flags: bool,
    ) -> Outcome:
        return REFERENCE_BLOCK_COMMIT(self, name, target, top, base, **{**flags, flag: False})

    return block_commit


# SHALLOW accepted but not checked: any base below top will do.
_block_commit_ignoring_shallow = _block_commit_with_flag_ignored("shallow")
# DELETE accepted, but the images committed away are left on disk.
_block_commit_ignoring_delete = _block_commit_with_flag_ignored("delete")


def _pivot_keeping_the_old_top_index(
    self: Hypervisor, domain: Domain, disk: LiveDisk, job: BlockJob
) -> Outcome:
    """After a pivot the new active layer keeps the index the old active layer had."""
    old_index = disk.top_index
    outcome = REFERENCE_COMPLETE_PIVOT(self, domain, disk, job)
    chain = disk.chain
    if outcome.ok and chain is not None:
        disk.top_index = old_index
        top = replace(chain.layers[0], index=old_index)
        disk.chain = Chain((top, *chain.layers[1:]), chain.terminated)
    return outcome


def _pivot_leaving_the_definition(
    self: Hypervisor, domain: Domain, disk: LiveDisk, job: BlockJob
) -> Outcome:
    """After a pivot the running disk is on the new image; the definition keeps the old one."""
    definition = list(domain.config)
    outcome = REFERENCE_COMPLETE_PIVOT(self, domain, disk, job)
    domain.config = definition
    return outcome


# -- wrong variants: daemon restarts ----------------------------------------------------------


def _daemon_restart_reprobing(self: Hypervisor) -> Outcome:
    """After reconnecting, every running disk's chain is probed again (forced)."""
    outcome = REFERENCE_RESTART(self)
    for domain in self.domains.values():
        for disk in domain.live or ():
            self.determine_disk_chain(domain, disk, True)
    return outcome


def _daemon_restart_dropping_events(self: Hypervisor) -> Outcome:
    """Job events qemu raised while the daemon was down are lost at reconnect."""
    self.events.pending.clear()
    return REFERENCE_RESTART(self)


def _daemon_restart_terminating_chains(self: Hypervisor) -> Outcome:
    """The chains read back at reconnect all end in a terminator, known end or not."""
    outcome = REFERENCE_RESTART(self)
    for domain in self.domains.values():
        for disk in domain.live or ():
            if disk.chain is not None and not disk.chain.terminated:
                disk.chain = Chain(disk.chain.layers, True)
    return outcome


def _daemon_restart_killing_broken_domains(self: Hypervisor) -> Outcome:
    """Reconnect checks every running disk's chain and stops a domain whose chain is broken."""
    outcome = REFERENCE_RESTART(self)
    for domain in list(self.domains.values()):
        for disk in domain.live or ():
            fresh = self.fresh_chain(disk.config)
            if isinstance(fresh, ChainError):
                self.destroy(domain.name)
                break
    return outcome


# -- the catalogue of mutants -----------------------------------------------------------------

MODERN = ("libvirt-modern",)
LIBVIRT_1_0 = ("libvirt-1.0",)
BOTH_2012 = ("seed-v2", "libvirt-1.0")

MUTANTS: tuple[Mutant, ...] = (
    # The historical bugs.
    Mutant(
        "network-disk-name-opened-as-file",
        "attaching an rbd/nbd disk opens its name as a local file and fails",
        "libvirt 1.0.0 regression from 4d34c92947e8, fixed by f0e72b2f5 (RBD attach, 1.0.1)",
        MODERN,
        patches=(Patch(Hypervisor, "_determine_modern", _determine_opening_network_names),),
    ),
    Mutant(
        "unplug-revokes-only-the-top",
        "hot-unplug revokes access to the disk's top image only, not to its cached chain",
        "BZ 876828, fixed by 1b2ebf950 and ddd103d34 (1.0.1)",
        MODERN,
        rules=_cache(detach_revokes_cached_chain=False),
        note="seen through the files-granted counter",
    ),
    Mutant(
        "chain-needs-cgroup-devices",
        "the chain is determined at start only when the cgroup devices controller is there",
        "BZ 896685, fixed by 82d5fe543 (1.0.3); the host here has no devices controller",
        MODERN,
        rules=_cache(chain_needs_cgroup_devices=True),
        cgroup_devices=False,
    ),
    Mutant(
        "stale-definition-chain-at-start",
        "start reuses the chain the persistent definition kept from the last run",
        "BZ 1144922, fixed by fe7ef7b11 (1.2.9): always re-detect the chain at start",
        ("libvirt-modern", "libvirt-1.0"),
        patches=(
            Patch(Hypervisor, "destroy", _destroy_keeping_chains_in_definition),
            Patch(Hypervisor, "determine_disk_chain", _determine_reusing_definition_chain),
        ),
    ),
    Mutant(
        "pivot-keeps-old-top-index",
        "after a pivot the new active layer keeps the old active layer's index",
        "BZ 1519745, fixed by fac8724ce (4.0.0): reset the index after pivot",
        MODERN,
        patches=(Patch(Hypervisor, "_complete_pivot", _pivot_keeping_the_old_top_index),),
    ),
    Mutant(
        "full-pull-leaves-chain-unterminated",
        "after a pull without base the chain's end is unknown instead of terminated",
        "libvirt 7.3.0 'Terminate backing store when doing a full-chain block pull' (S18)",
        MODERN,
        rules=_cache(pull_terminates=False),
    ),
    Mutant(
        "forced-reprobe-failure-returns-0",
        "a forced re-probe that fails returns 0 (the failure is reported as success)",
        "the seed: PATCHv2 12/16's '&& !force', dropped in 4d34c92947e8 (Laine Stump's review)",
        LIBVIRT_1_0,
        rules=_cache(forced_failure_rc=0),
    ),
    Mutant(
        "no-reprobe-after-pull",
        "a completed block pull does not force a re-probe; the cache keeps the old chain",
        "4d34c92947e8: qemuProcessHandleBlockJob re-probes on PULL completion (2012 profiles)",
        BOTH_2012,
        rules=_reprobe_without("pull"),
    ),
    Mutant(
        "no-reprobe-after-commit",
        "a completed block commit does not force a re-probe; the cache keeps the old chain",
        "3f38c7e3a widened the forced re-probe to COMMIT completion (libvirt 1.0.0)",
        LIBVIRT_1_0,
        rules=_reprobe_without("commit"),
    ),
    Mutant(
        "snapshot-leaves-cached-chain",
        "an external snapshot switches the disk to the overlay but keeps the old cached chain",
        "4d34c92947e8 'nuke the existing chain' (2012); 363e9a68d/7456c4f5f model it (3.0)",
        CACHE_PROFILES,
        patches=(Patch(Hypervisor, "snapshot", _snapshot_leaving_the_cache),),
    ),
    Mutant(
        "snapshot-redetects-chain",
        "after an external snapshot the chain is probed again from the overlay's header",
        "eec2f6594 (1.2.4) re-detected after snapshots; 7456c4f5f (3.0) stopped: with "
        "REUSE_EXT 'this might end up in redetecting wrong data'",
        MODERN,
        patches=(Patch(Hypervisor, "snapshot", _snapshot_then_redetect),),
    ),
    Mutant(
        "reuse-snapshot-relative-name-not-loaded",
        "a REUSE_EXT snapshot does not read the overlay's relative backing name",
        "BZ 1461303, fixed by e20853e1d (3.5.0): relPath from the user's overlay",
        MODERN,
        patches=(Patch(Hypervisor, "_recorded_backing", _reuse_overlay_backing_not_read),),
    ),
    Mutant(
        "chain-lost-on-daemon-restart",
        "a daemon restart loses the cached chains of running domains",
        "libvirt 1.0.0-1.2.4 kept the chain in memory only (S25); the status XML keeps it",
        MODERN,
        rules=_cache(survives_restart=False),
    ),
    Mutant(
        "reconnect-reprobes-chains",
        "reconnecting after a daemon restart probes every running disk's chain again",
        "b3e99ad8d (1.2.5) forced re-detection on reconnect; 639a00984, 3cf0655c3 and "
        "-blockdev took it back (S25)",
        MODERN,
        patches=(Patch(Hypervisor, "daemon_restart", _daemon_restart_reprobing),),
    ),
    Mutant(
        "media-change-keeps-old-chain",
        "a media change probes the new medium but the cache keeps the old medium's chain",
        "libvirt 1.0 qemuDomainChangeDiskMediaLive probed a copy of the definition (inferred)",
        MODERN,
        rules=_cache(media_change_keeps_old_chain=True),
    ),
    Mutant(
        "user-terminator-not-parsed",
        "an empty <backingStore/> in the definition is not parsed as the chain's end",
        "BZ 1509110, fixed by 19448a256 (3.10.0)",
        MODERN,
        patches=(Patch(reference_adapter, "_disk", _disk_without_terminator),),
    ),
    Mutant(
        "restart-terminates-unknown-chains",
        "after a daemon restart a chain whose end was unknown reads as terminated",
        "a693fdba0 (3.9.0): an unterminated chain must stay so across the status XML (S30)",
        MODERN,
        patches=(Patch(Hypervisor, "daemon_restart", _daemon_restart_terminating_chains),),
    ),
    Mutant(
        "reconnect-kills-domain-with-broken-chain",
        "reconnecting after a daemon restart stops a domain whose backing file went missing",
        "639a00984 (1.2.9): reconnect is best effort (report_broken=false) so that libvirt "
        "does not lose the VM (S25)",
        MODERN,
        patches=(Patch(Hypervisor, "daemon_restart", _daemon_restart_killing_broken_domains),),
    ),
    Mutant(
        "job-finished-while-down-forgotten",
        "a block job that finished while the daemon was down is never concluded",
        "d3158852fa keeps block jobs in the status XML and reconnect replays them (S26)",
        MODERN,
        patches=(Patch(Hypervisor, "daemon_restart", _daemon_restart_dropping_events),),
    ),
    Mutant(
        "qed-backing-not-probed",
        "a QED backing whose format is not flagged raw is taken as raw, not probed",
        "libvirt 0.8.3-4.4: QED without QED_F_BACKING_FORMAT_NO_PROBE is AUTO_SAFE, always "
        "probed (§3.4, §3.5)",
        LIBVIRT_1_0,
        rules=_rules(qed_unrecorded_always_probed=False),
    ),
    # The obvious wrong turns.
    Mutant(
        "missing-raw-disk-accepted",
        "a raw disk whose file is missing is started (nothing checks that it exists)",
        "obvious wrong turn: b19710b9b/24e47ee2b/adcc31bb8 check a non-backing disk exists (S5)",
        MODERN,
        patches=(Patch(Hypervisor, "_determine_modern", _determine_not_checking_non_backing_tops),),
    ),
    Mutant(
        "snapshot-leaves-definition",
        "a live external snapshot leaves the persistent definition on the old top",
        "obvious wrong turn: the snapshot code points the persistent definition at the overlay "
        "(S15, S27)",
        CACHE_PROFILES,
        patches=(Patch(Hypervisor, "snapshot", _snapshot_leaving_the_definition),),
    ),
    Mutant(
        "pivot-leaves-definition",
        "after an active-commit pivot the persistent definition stays on the old top",
        "obvious wrong turn: qemuBlockJobRewriteConfigDiskSource rewrites it to base (S20)",
        MODERN,
        patches=(Patch(Hypervisor, "_complete_pivot", _pivot_leaving_the_definition),),
    ),
    Mutant(
        "pull-base-ignored",
        "a pull with a base streams the whole chain (the base is dropped)",
        "obvious wrong turn: virDomainBlockRebase keeps everything from base down (S18)",
        CACHE_PROFILES,
        patches=(Patch(Hypervisor, "block_pull", _block_pull_ignoring_base),),
    ),
    Mutant(
        "commit-shallow-not-checked",
        "block commit accepts SHALLOW without checking that base is right below top",
        "obvious wrong turn: 0a220e222 refuses 'base is not immediately below top' (S19)",
        CACHE_PROFILES,
        patches=(Patch(Hypervisor, "block_commit", _block_commit_ignoring_shallow),),
    ),
    Mutant(
        "commit-delete-flag-ignored",
        "block commit accepts DELETE but leaves the committed images on disk",
        "obvious wrong turn: VIR_DOMAIN_BLOCK_COMMIT_DELETE removes them once the job ends (S19)",
        MODERN,
        patches=(Patch(Hypervisor, "block_commit", _block_commit_ignoring_delete),),
    ),
    Mutant(
        "failed-forced-reprobe-cached-as-success",
        "a forced re-probe that fails keeps the old chain cached and returns 0",
        "obvious wrong turn: the seed's question, a failure must never be cached (S1)",
        CACHE_PROFILES,
        patches=(Patch(Hypervisor, "determine_disk_chain", _determine_caching_forced_failure),),
    ),
    Mutant(
        "force-ignored",
        "a forced re-probe returns the cached chain as a plain call would",
        "obvious wrong turn: 4d34c92947e8 frees the cached chain when force is set",
        BOTH_2012,
        patches=(Patch(Hypervisor, "determine_disk_chain", _determine_ignoring_force),),
    ),
    Mutant(
        "cache-never-reused",
        "every caller probes again; a cached chain is never used",
        "obvious wrong turn: the seed caches the chain so that callers stop re-probing",
        LIBVIRT_1_0,
        rules=_cache(reuses_cache=False),
    ),
    Mutant(
        "non-backing-top-read",
        "a raw (non-backing format) disk is opened and probed like a qcow2 one",
        "obvious wrong turn: 955668138 and b19710b9b never open a non-backing format (R4)",
        MODERN,
        patches=(Patch(Hypervisor, "_determine_modern", _determine_reading_non_backing_tops),),
    ),
    Mutant(
        "loop-detection-missing",
        "a backing loop is not noticed: the walk goes round it for ever",
        "obvious wrong turn: 35c74c173 keeps a hash of the files visited (libvirt 1.0)",
        LIBVIRT_1_0,
        rules=_rules(loop_detection=LoopRule.DEPTH_LIMIT),
    ),
    Mutant(
        "prober-without-depth-limit",
        "the prober has no depth limit, relying on the qemu driver's check after the walk",
        "obvious wrong turn: modern libvirt ends loops only by max_depth in the walk (§3.8)",
        MODERN,
        rules=_rules(max_depth=None),
    ),
    Mutant(
        "alias-loop-missed",
        "relative names are no longer canonicalised, but loops are still found by the path "
        "as spelled, so a loop through another spelling of a file is missed",
        "obvious wrong turn: e71437fff dropped canonicalisation and hashed each file's unique "
        "identifier instead (1.2.6)",
        LIBVIRT_1_0,
        rules=_rules(relative_names=RelativeNameRule.LIBVIRT_LEXICAL),
    ),
    Mutant(
        "relative-names-canonicalised",
        "relative backing names are canonicalised (symlinks and '..' resolved)",
        "obvious wrong turn: canonicalisation was dropped in e71437fff (1.2.6); "
        "virstoragetest qcow2-symlinks (S9)",
        MODERN,
        rules=_rules(relative_names=RelativeNameRule.CANONICAL),
    ),
    Mutant(
        "relative-name-against-symlink-target",
        "a relative backing name is resolved against the directory of a symlink's target",
        "obvious wrong turn: virStorageSourceNewFromBackingRelative uses the symlink's own "
        "directory (S9, virstoragetest qcow2-symlinks)",
        MODERN,
        patches=(
            Patch(backing_names, "resolve_relative_libvirt", _resolve_relative_against_link_target),
        ),
    ),
    Mutant(
        "top-format-probed",
        "a top image whose format is unspecified is probed instead of taken as raw",
        "obvious wrong turn: the top is never probed (S3; virstoragetest *-auto; TCK 210)",
        MODERN,
        patches=(Patch(_LibvirtWalk, "run", _run_probing_the_top),),
    ),
    Mutant(
        "format-probing-allowed",
        "format probing is allowed: unspecified top and unrecorded backing formats are probed",
        "CVE-2010-2237/2238, and CVE-2011-2178 where a wrong sizeof re-enabled probing (b598ac555)",
        LIBVIRT_1_0,
        rules=_rules(allow_format_probing=True),
    ),
    Mutant(
        "unrecorded-backing-probed",
        "a backing whose format is not recorded is probed and trusted even with a backing",
        "obvious wrong turn: ae9e6c2a2b75 accepts a probe only without a backing (S7)",
        MODERN,
        rules=_rules(unrecorded_backing=UnrecordedBackingRule.PROBE),
    ),
    Mutant(
        "unrecorded-backing-taken-as-raw",
        "a backing whose format is not recorded is taken as raw (the chain silently ends)",
        "libvirt 4.5-5.10 rule that truncated chains under -blockdev; 3615e8b39bad, "
        "ae9e6c2a2b75 (S7)",
        MODERN,
        rules=_rules(unrecorded_backing=UnrecordedBackingRule.RAW),
    ),
    Mutant(
        "recorded-backing-format-ignored",
        "the backing format an overlay records is ignored and the backing is probed",
        "CVE-2010-2238: libvirt probed backing stores without consulting the defined format",
        MODERN,
        patches=(Patch(_LibvirtWalk, "_backing_format", _backing_format_never_recorded),),
    ),
    Mutant(
        "depth-limit-off-by-one",
        "the qemu driver accepts a chain of 201 layers",
        "obvious wrong turn: qemuDomainStorageSourceValidateDepth allows 200 (510d154a0)",
        MODERN,
        rules=_cache(depth_limit=QEMU_DRIVER_MAX_DEPTH + 1),
    ),
    Mutant(
        "prober-depth-limit-off-by-one",
        "the prober walks 201 layers before it stops",
        "obvious wrong turn: depth > max_depth ends the walk at 200 (S11)",
        MODERN,
        rules=_rules(max_depth=QEMU_DRIVER_MAX_DEPTH + 1),
    ),
    Mutant(
        "snapshot-depth-ignores-new-layer",
        "a snapshot of a 200-layer chain is allowed (the overlay is not counted)",
        "obvious wrong turn: qemuSnapshotDiskPrepareOne checks the depth with add = 1 (R5)",
        MODERN,
        patches=(Patch(Hypervisor, "_validate_depth", _validate_depth_without_the_new_layer),),
    ),
    Mutant(
        "indexes-by-depth",
        "backing indexes are each layer's depth, renumbered after every change",
        "obvious wrong turn: -blockdev indexes are stable per-domain numbers (S23, 6.6.0)",
        MODERN,
        rules=_cache(index=IndexRule.DEPTH),
    ),
    Mutant(
        "backing-name-limit-off-by-one",
        "a 1024-byte qcow2 backing name is accepted",
        "obvious wrong turn: 34e317cfd takes a name longer than 1023 bytes as no backing",
        MODERN,
        rules=_read(backing_name_max=1024),
    ),
    Mutant(
        "qcow2-v3-extensions-from-72",
        "qcow2 v3 header extensions are scanned from byte 72, missing the backing format",
        "libvirt 1.0's rule, wrong for v3 headers (extensions start at header_length)",
        MODERN,
        rules=_read(qcow2_v3_extensions_at_header_length=False),
    ),
    Mutant(
        "inline-credentials-followed",
        "a backing URI with inline credentials is followed as a network element",
        "obvious wrong turn: virStorageSourceNewFromBacking returns 1 and the chain stops",
        MODERN,
        rules=_rules(inline_credentials_stop=False),
    ),
    Mutant(
        "network-backing-not-followed",
        "a network backing adds no element: the chain ends at its overlay",
        "libvirt 1.0 (eac74c1f4752 'don't probe non-files'); since 1.2 the element is made",
        MODERN,
        rules=_rules(network_backing=NetworkBackingRule.NOT_FOLLOWED),
    ),
    Mutant(
        "json-backing-names-unparsed",
        "json:{...} backing names are not parsed",
        "e91f767c7 (2.1.0) added the json: parser",
        MODERN,
        rules=_rules(json_backing_names=False),
    ),
    Mutant(
        "recorded-none-format-taken-as-unrecorded",
        "a backing format recorded as 'none' is treated as not recorded (probed)",
        "obvious wrong turn: libvirt 9.x before 9.10 hands a recorded 'none' to the prober as "
        "format NONE, which fails (§3.4; storage_file_probe.c qcow2GetExtensions)",
        MODERN,
        rules=_rules(none_format_name_fails=False),
    ),
    Mutant(
        "chains-without-terminator",
        "chains carry no explicit terminator, so committing the bottom layer reads as "
        "'has no backing file' rather than a failed base lookup",
        "a693fdba0 (3.9.0) added the explicit terminator (S19, S30)",
        MODERN,
        rules=_cache(terminated_chains=False),
    ),
    Mutant(
        "network-disk-chain-terminated",
        "a network disk's chain is a single element that claims to be the whole chain",
        "obvious wrong turn: only gluster is traversed, other protocols give one element and "
        "no terminator (S2, a693fdba0)",
        MODERN,
        patches=(Patch(Hypervisor, "_determine_modern", _determine_terminating_network_disks),),
    ),
    Mutant(
        "format-detected-from-file-extension",
        "a probed image without a known magic gets the format its file name suggests",
        "the 2012 virStorageFileProbeFormatFromBuf fell back on the file name extension; the "
        "later probe uses magic and version only (§3.3)",
        MODERN,
        rules=_rules(detection=DetectionRule.LIBVIRT_2012),
    ),
    Mutant(
        "user-backing-store-ignored",
        "a <backingStore> given in the definition is ignored and the chain probed",
        "libvirt 5.10 made user <backingStore> input (backingStoreInput); R3",
        MODERN,
        rules=_cache(user_backing_store=False),
    ),
)


def get_mutant(mutant_id: str) -> Mutant:
    """The mutant with this id; a KeyError names the known ones."""
    for mutant in MUTANTS:
        if mutant.id == mutant_id:
            return mutant
    raise KeyError(f"no mutant {mutant_id!r} (see: chainsuite mutants --list)")


class MutantAdapter(ReferenceAdapter):
    """The reference with one mutant's defect, under one of the mutant's profiles.

    It presents itself with the base profile's name and capabilities, so a Runner
    judges it by that profile's expectations. The mutant's patches are in place only
    while it answers a call; a walk that never ends is reported as a hang and an
    exception as a crash (the runner counts both as errors).
    """

    def __init__(self, mutant: Mutant, profile: str | None = None) -> None:
        super().__init__(profile if profile is not None else mutant.profiles[0])
        self.mutant = mutant
        self.base_profile = self.profile
        self.profile = mutant.profile(self.base_profile)
        self._info = replace(
            self._info,
            name="mutant",
            version=mutant.id,
            details={"summary": mutant.defect, "provenance": mutant.provenance},
        )
        self.hypervisor = self._new_hypervisor()

    def _new_hypervisor(self) -> Hypervisor:
        return Hypervisor(self.profile, cgroup_devices=self.mutant.cgroup_devices)

    @contextlib.contextmanager
    def _mutated(self) -> Iterator[None]:
        with applied((WATCHDOG, *self.mutant.patches)):
            try:
                yield
            except RunawayWalk as runaway:
                raise AdapterError(f"hung: {runaway}") from None
            except AdapterError:
                raise
            except Exception as error:
                # A defect may break an assumption the reference asserts: the mutant crashed.
                raise AdapterError(f"crashed: {type(error).__name__}: {error}") from None

    def begin_case(self, directory: Path) -> None:
        self.hypervisor = self._new_hypervisor()

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        with self._mutated():
            return super().call(op, args)

    def end_case(self) -> None:
        with self._mutated():
            super().end_case()


def open_mutant(spec: str) -> MutantAdapter:
    """``MUTANT-ID`` or ``MUTANT-ID:PROFILE`` as an adapter; AdapterError if there is none."""
    mutant_id, _, profile = spec.partition(":")
    try:
        mutant = get_mutant(mutant_id)
    except KeyError as error:
        raise AdapterError(str(error.args[0])) from None
    if profile and profile not in mutant.profiles:
        raise AdapterError(
            f"mutant {mutant_id!r} applies to {', '.join(mutant.profiles)}, not {profile!r}"
        )
    return MutantAdapter(mutant, profile or None)


# -- scoring ----------------------------------------------------------------------------------


class KillKind(StrEnum):
    CASE = "case"
    EXPLORATION = "exploration"


@dataclass(frozen=True)
class Kill:
    """What told the mutant apart from the reference."""

    kind: KillKind
    by: str
    """The case id, or a summary of the sequence the exploration found."""
    detail: str


@dataclass(frozen=True)
class MutantResult:
    """One mutant under one profile, judged by that profile's expectations."""

    mutant: Mutant
    profile: str
    kill: Kill | None
    killing_cases: tuple[str, ...]
    """Every case that killed it, when every case was run; else the first one."""
    cases_run: int

    @property
    def killed(self) -> bool:
        return self.kill is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "mutant": self.mutant.id,
            "profile": self.profile,
            "defect": self.mutant.defect,
            "provenance": self.mutant.provenance,
            "realisation": self.mutant.realisation.value,
            "note": self.mutant.note,
            "status": "killed" if self.killed else "survived",
            "killed_by": None
            if self.kill is None
            else {"kind": self.kill.kind.value, "by": self.kill.by, "detail": self.kill.detail},
            "killing_cases": list(self.killing_cases),
            "cases_run": self.cases_run,
        }


def reference_passes(
    cases: Sequence[Case], profile: str, cache_root: Path | None = None
) -> set[str]:
    """The ids of the cases the unmutated reference passes under ``profile``."""
    runner = _runner(ReferenceAdapter(profile), profile, cache_root)
    return {case.id for case in cases if runner.run(case).status is Status.PASSED}


def score(
    mutant: Mutant,
    profile: str,
    cases: Sequence[Case],
    *,
    every_case: bool = False,
    cache_root: Path | None = None,
) -> MutantResult:
    """Runs ``cases`` (those the reference passes) against the mutant until one kills it.

    A case kills the mutant when it fails or breaks against it; with ``every_case`` the
    run goes on to name every case that does.
    """
    adapter = MutantAdapter(mutant, profile)
    runner = _runner(adapter, profile, cache_root)
    first: Kill | None = None
    killers: list[str] = []
    run = 0
    try:
        for case in cases:
            result = runner.run(case)
            run += 1
            if result.status not in (Status.FAILED, Status.ERROR):
                continue
            killers.append(case.id)
            if first is None:
                first = Kill(KillKind.CASE, case.id, result.message)
            if not every_case:
                break
    finally:
        adapter.close()
    return MutantResult(mutant, profile, first, tuple(killers), run)


def _runner(adapter: ReferenceAdapter, profile: str, cache_root: Path | None) -> Runner:
    if cache_root is None:
        return Runner(adapter, profile)
    return Runner(adapter, profile, cache_root=cache_root)
