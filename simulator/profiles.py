"""Named rule profiles: every prober rule that changed over libvirt's history is a field here.

Code never asks which version it emulates; it asks the active profile for one rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from simulator.formats.header import LibvirtReadRules

LIBVIRT_MAX_HEADER = 0x8200
"""VIR_STORAGE_MAX_HEADER: bytes libvirt reads of a header since 1.2 (the ISO magic fits)."""
LIBVIRT_2012_MAX_HEADER = 20 * 512
"""STORAGE_MAX_HEAD of libvirt 1.0 ("VMDK needs at least this")."""
QEMU_DRIVER_MAX_DEPTH = 200
"""QEMU_DOMAIN_STORAGE_SOURCE_CHAIN_MAX_DEPTH."""


class TopFormatRule(StrEnum):
    """What an unspecified format of the top image becomes."""

    PROBE_IF_ALLOWED = "probe-if-allowed"
    """libvirt <= 4.4: probe when allow_disk_format_probing is set, else raw."""
    RAW = "raw"
    """libvirt >= 4.5: raw (dir for a directory); the top is never probed."""
    PROBE = "probe"
    """qemu-img without -f: always probe."""


class UnrecordedBackingRule(StrEnum):
    """What a backing image whose format the overlay does not record becomes."""

    RAW_UNLESS_PROBING_ALLOWED = "raw-unless-probing-allowed"
    """libvirt 0.8.3-4.4: raw (the chain ends there) unless probing is allowed."""
    RAW = "raw"
    """libvirt 4.5-5.10: raw."""
    ERROR = "error"
    """libvirt 6.0: an error, the disk is refused."""
    PROBE_IF_NO_BACKING = "probe-if-no-backing"
    """libvirt >= 6.1: probed, accepted only if the probed image has no backing of its own."""
    PROBE = "probe"
    """qemu: probed silently."""


class UnknownFormatNameRule(StrEnum):
    """What a recorded backing format that is not one of libvirt's format names becomes."""

    AS_UNRECORDED = "as-unrecorded"
    """libvirt <= 9.9: as if no format were recorded (qcow2 'file', 'nbd', 'zzz')."""
    RAW = "raw"
    """libvirt >= 9.10: raw, since qemu allows protocol driver names there."""
    QEMU_DRIVER = "qemu-driver"
    """qemu: the name is a driver: a format, a protocol, or 'Unknown driver'."""


class RelativeNameRule(StrEnum):
    """How a relative backing name becomes a path."""

    LIBVIRT_LEXICAL = "libvirt-lexical"
    """dirname(parent) + '/' + name, no normalisation, no symlink resolution (libvirt >= 1.2.6)."""
    CANONICAL = "canonical"
    """realpath(dirname(parent) + '/' + name); a missing file fails (libvirt 1.0)."""
    QEMU_LEXICAL = "qemu-lexical"
    """The parent's name up to its last '/' + name; '' when it has none (qemu)."""


class LoopRule(StrEnum):
    """How a loop in the chain is noticed."""

    VISITED_PATHS = "visited-paths"
    """A set of the paths opened (canonical below the top): 'self-referential' (libvirt 1.0)."""
    DEPTH_LIMIT = "depth-limit"
    """Only the depth limit: 'self-referential or too deeply nested' (libvirt >= 9)."""
    VISITED_NAMES = "visited-names"
    """The exact name strings opened: 'creates an infinite loop' (qemu-img info)."""


class DetectionRule(StrEnum):
    """How a format is probed."""

    LIBVIRT_2012 = "libvirt-2012"
    LIBVIRT = "libvirt"
    QEMU = "qemu"


class NetworkBackingRule(StrEnum):
    """What a backing on a network server does to the chain."""

    NOT_FOLLOWED = "not-followed"
    """libvirt 1.0: the name is kept, no element is made; the chain's end is unknown."""
    UNTERMINATED_ELEMENT = "unterminated-element"
    """libvirt >= 1.2: an element with protocol and hosts ends the chain, unterminated."""
    ERROR = "error"
    """qemu-img would connect to the server; the prober does not, and says so."""


class SnapshotRule(StrEnum):
    """What an external snapshot does to the cached chain."""

    DROP_CACHE = "drop-cache"
    """libvirt 1.0: the cache is freed; the next caller that needs the chain probes again."""
    MODEL = "model"
    """libvirt >= 3.0: the new chain is the overlay on top of the known one; nothing probed."""


class IndexRule(StrEnum):
    """How the backing index numbers that ``vda[N]`` addresses are assigned."""

    NONE = "none"
    """No index numbers and no ``vda[N]`` addressing (before libvirt 1.2.4)."""
    DEPTH = "depth"
    """Each layer's depth below the top (libvirt 1.2.4 - 5.x, without -blockdev)."""
    DOMAIN_COUNTER = "domain-counter"
    """A per-domain counter: each image libvirt prepares gets the next number (-blockdev)."""


@dataclass(frozen=True)
class CacheRules:
    """The rules of the cached chain while a domain runs (qemuDomainDetermineDiskChain & co)."""

    forced_failure_rc: int
    """What a forced re-probe that fails returns (PATCHv2 returned 0, libvirt 1.0 -1)."""
    stop_loop: bool
    """qemuProcessStop frees every disk's chain itself (PATCHv2's loop)."""
    network_disks_probed: bool
    """Network disk names are probed as files (the 1.0.0 RBD attach regression)."""
    reprobe_after: frozenset[str]
    """Block jobs whose completion forces a re-probe ("pull", "commit")."""
    snapshot: SnapshotRule
    models_jobs: bool
    """Job completion rewrites the cached chain instead of probing (libvirt >= 3.x)."""
    pull_terminates: bool
    """A full pull leaves an explicit terminator (7.3.0); else the end is unknown."""
    survives_restart: bool
    """The chain is kept in the status XML across a daemon restart."""
    chain_needs_cgroup_devices: bool
    """The chain is filled at start only when the cgroup devices controller is active."""
    media_change_keeps_old_chain: bool
    """A media change probes the new medium on a copy and keeps the old chain (inferred)."""
    detach_revokes_cached_chain: bool
    """Unplug revokes access to the cached chain, not just the top (BZ 876828, 1.0.1)."""
    user_backing_store: bool
    """A <backingStore> given in the definition is trusted (libvirt >= 5.10)."""
    active_commit: bool
    """Committing the active layer (with pivot) is supported (libvirt >= 1.2.6)."""
    commit_delete: bool
    """Block commit accepts the DELETE flag (libvirt 1.0 accepted SHALLOW only)."""
    terminated_chains: bool
    """Chains end in an explicit terminator (3.9), so committing from the bottom layer finds
    a backing element and fails on the base lookup instead of "has no backing file"."""
    legacy_commit_wording: bool
    """Block commit's errors as libvirt 1.0 worded them ("could not find top '%s' ...")."""
    depth_limit: int | None
    """Layers a disk may have (qemuDomainStorageSourceValidateDepth), a snapshot adds one."""
    index: IndexRule
    overlay_qcow2_version: int
    """The qcow2 version the era's qemu wrote new overlays in (compat=1.1 default in 1.7)."""
    reuses_cache: bool = True
    """A non-forced caller (start, hotplug, a block job) uses the cached chain; False probes
    every time (no cache at all). A rule of the probing (2012) cache; a modelled chain has none."""
    offline_snapshot: bool = False
    """A disk-only external snapshot of a shut-off domain creates the overlay and points the
    definition at it (qemuDomainSnapshotCreateInactiveExternal)."""
    rejects_unknown_format_names: bool = False
    """A definition naming an unknown format, or 'none', is refused when parsed."""
    qemu_checks_layer_formats: bool = False
    """qemu opens each layer with the format libvirt gives it (-blockdev), so a layer whose
    file is not in that format makes a start or hotplug fail."""
    same_medium_is_noop: bool = False
    """A media change (a device update) naming the source the drive already has changes
    nothing, for any disk (qemuDomainChangeDiskLive, virStorageSourceIsSameLocation)."""
    image_locks: bool = False
    """qemu (2.10+) locks image files: a file one node writes cannot be opened by another,
    in the same qemu or another one, so such a start, hotplug or job fails."""
    arguments_first: bool = False
    """Block jobs and snapshots check their arguments before the state of the domain and
    disk (seen on libvirt 9.0): a snapshot's overlay must be absolute while its XML is
    parsed, before its disk is looked up; a copy's destination must be absolute before
    anything else; commit looks top and base up before it asks that the domain runs (in a
    shut-off domain's definition, where the chain is only the user's <backingStore>), that
    the disk has no other job and that the drive has a medium; pull looks its base up
    before the medium check; a copy of an empty drive numbers the mirror before it fails."""
    commit_stats_written_layers: bool = False
    """Before a commit libvirt lets qemu write the base, and the top's parent when that is
    not the active layer, through the devices cgroup, which stats each path: a deleted one
    fails, 'Path ... is not accessible' (libvirt 9.0 with the cgroup devices controller).
    qemu still holds the file open; a pull or copy asks for no new access and goes on."""
    media_change_removes_first: bool = False
    """A media change removes the old medium and its nodes from qemu before it adds the new
    one (qemuDomainChangeMediaBlockdev, libvirt 9.0): when qemu refuses the new one, the
    drive has no medium while libvirt keeps the old source, and an ejected drive keeps an
    empty source that names nodes too. A job or snapshot of such a drive fails in qemu, or
    in libvirt's size query, on a node that is not there."""
    commit_active_checks_first: bool = False
    """Block commit asks about the active layer (the flag, and whether the top is the active
    layer) before it checks that the top has a backing and that a shallow commit's base is
    right below it (qemuBlockCommit, libvirt 9.0); libvirt 1.x checked those first."""
    pivot_asks_ready_first: bool = False
    """A pivot asks first that the disk's job is ready (qemuDomainBlockPivot, -blockdev
    era), so a pull or a plain commit, which never is, is 'not ready for pivot' rather than
    no copy to pivot."""


class HeaderDecoder(StrEnum):
    """Whose header reading applies: libvirt's lenient one or qemu's validating one."""

    LIBVIRT = "libvirt"
    QEMU = "qemu"


@dataclass(frozen=True)
class Profile:
    """One era's rules: every field is one rule; ``summary`` says where they come from."""

    name: str
    summary: str
    top_format: TopFormatRule
    allow_format_probing: bool
    unrecorded_backing: UnrecordedBackingRule
    qed_unrecorded_always_probed: bool
    """QED without its raw flag (AUTO_SAFE) is probed even where probing is not allowed."""
    unknown_format_name: UnknownFormatNameRule
    none_format_name_fails: bool
    """A recorded 'none' reaches the prober as format NONE and fails (libvirt 6.x-9.x)."""
    relative_names: RelativeNameRule
    loop_detection: LoopRule
    max_depth: int | None
    """Layers at most, top included (None: no limit)."""
    header_bound: int | None
    """Bytes read of each header (None: as much as the format asks for, as qemu does)."""
    read_rules: LibvirtReadRules
    decoder: HeaderDecoder
    detection: DetectionRule
    network_backing: NetworkBackingRule
    json_backing_names: bool
    """json:{...} backing names are parsed (libvirt >= 2.1, qemu); else a protocol string."""
    inline_credentials_stop: bool
    """A backing URI with credentials ends the chain before it, unterminated (libvirt)."""
    detected_iso_as_raw: bool
    """The qemu driver turns a detected iso backing into raw (libvirt >= 1.2)."""
    cache: CacheRules


_MODERN_READ = LibvirtReadRules(
    backing_name_max=1023,
    qcow2_v3_extensions_at_header_length=True,
    qcow2_extension_needs_nul=False,
    qcow2_extension_padding=False,
    vmdk_descriptor_limit=LIBVIRT_MAX_HEADER - 1,
)
_2012_READ = LibvirtReadRules(
    backing_name_max=None,
    qcow2_v3_extensions_at_header_length=False,
    qcow2_extension_needs_nul=True,
    qcow2_extension_padding=False,
    vmdk_descriptor_limit=LIBVIRT_2012_MAX_HEADER,
)

_2012_CACHE = CacheRules(
    forced_failure_rc=-1,
    stop_loop=False,
    network_disks_probed=True,
    reprobe_after=frozenset({"pull", "commit"}),
    snapshot=SnapshotRule.DROP_CACHE,
    models_jobs=False,
    pull_terminates=False,
    survives_restart=False,
    chain_needs_cgroup_devices=True,
    media_change_keeps_old_chain=True,
    detach_revokes_cached_chain=False,
    user_backing_store=False,
    active_commit=False,
    commit_delete=False,
    terminated_chains=False,
    legacy_commit_wording=True,
    depth_limit=None,
    index=IndexRule.NONE,
    overlay_qcow2_version=2,
)
_MODERN_CACHE = CacheRules(
    forced_failure_rc=-1,
    stop_loop=False,
    network_disks_probed=False,
    reprobe_after=frozenset(),
    snapshot=SnapshotRule.MODEL,
    models_jobs=True,
    pull_terminates=True,
    survives_restart=True,
    chain_needs_cgroup_devices=False,
    media_change_keeps_old_chain=False,
    detach_revokes_cached_chain=True,
    user_backing_store=True,
    active_commit=True,
    commit_delete=True,
    terminated_chains=True,
    legacy_commit_wording=False,
    depth_limit=QEMU_DRIVER_MAX_DEPTH,
    index=IndexRule.DOMAIN_COUNTER,
    overlay_qcow2_version=3,
    offline_snapshot=True,
    rejects_unknown_format_names=True,
    image_locks=True,
    same_medium_is_noop=True,
    qemu_checks_layer_formats=True,
    arguments_first=True,
    pivot_asks_ready_first=True,
    commit_stats_written_layers=True,
    commit_active_checks_first=True,
    media_change_removes_first=True,
)

LIBVIRT_1_0 = Profile(
    name="libvirt-1.0",
    summary="libvirt 1.0.0 (November 2012): the cache as it landed in 4d34c92947e8",
    top_format=TopFormatRule.PROBE_IF_ALLOWED,
    allow_format_probing=False,
    unrecorded_backing=UnrecordedBackingRule.RAW_UNLESS_PROBING_ALLOWED,
    qed_unrecorded_always_probed=True,
    unknown_format_name=UnknownFormatNameRule.AS_UNRECORDED,
    none_format_name_fails=False,
    relative_names=RelativeNameRule.CANONICAL,
    loop_detection=LoopRule.VISITED_PATHS,
    max_depth=None,
    header_bound=LIBVIRT_2012_MAX_HEADER,
    read_rules=_2012_READ,
    decoder=HeaderDecoder.LIBVIRT,
    detection=DetectionRule.LIBVIRT_2012,
    network_backing=NetworkBackingRule.NOT_FOLLOWED,
    json_backing_names=False,
    inline_credentials_stop=False,
    detected_iso_as_raw=False,
    cache=_2012_CACHE,
)

SEED_V2 = replace(
    LIBVIRT_1_0,
    name="seed-v2",
    summary="Eric Blake's PATCHv2 12/16 as posted (October 2012) over libvirt 1.0's prober",
    cache=replace(
        _2012_CACHE, forced_failure_rc=0, stop_loop=True, reprobe_after=frozenset({"pull"})
    ),
)
"""The posted patch shares 1.0's prober; it differs in the cache rules the review discussed."""

LIBVIRT_MODERN = Profile(
    name="libvirt-modern",
    summary="libvirt 6.1-9.x with -blockdev, as libvirt 9.0 implements it",
    top_format=TopFormatRule.RAW,
    allow_format_probing=False,
    unrecorded_backing=UnrecordedBackingRule.PROBE_IF_NO_BACKING,
    qed_unrecorded_always_probed=False,
    unknown_format_name=UnknownFormatNameRule.AS_UNRECORDED,
    none_format_name_fails=True,
    relative_names=RelativeNameRule.LIBVIRT_LEXICAL,
    loop_detection=LoopRule.DEPTH_LIMIT,
    max_depth=QEMU_DRIVER_MAX_DEPTH,
    header_bound=LIBVIRT_MAX_HEADER,
    read_rules=_MODERN_READ,
    decoder=HeaderDecoder.LIBVIRT,
    detection=DetectionRule.LIBVIRT,
    network_backing=NetworkBackingRule.UNTERMINATED_ELEMENT,
    json_backing_names=True,
    inline_credentials_stop=True,
    detected_iso_as_raw=True,
    cache=_MODERN_CACHE,
)

QEMU = Profile(
    name="qemu",
    summary="qemu-img 7.2 info --backing-chain",
    top_format=TopFormatRule.PROBE,
    allow_format_probing=True,
    unrecorded_backing=UnrecordedBackingRule.PROBE,
    qed_unrecorded_always_probed=True,
    unknown_format_name=UnknownFormatNameRule.QEMU_DRIVER,
    none_format_name_fails=False,
    relative_names=RelativeNameRule.QEMU_LEXICAL,
    loop_detection=LoopRule.VISITED_NAMES,
    max_depth=None,
    header_bound=None,
    read_rules=_MODERN_READ,
    decoder=HeaderDecoder.QEMU,
    detection=DetectionRule.QEMU,
    network_backing=NetworkBackingRule.ERROR,
    json_backing_names=True,
    inline_credentials_stop=False,
    detected_iso_as_raw=False,
    cache=_MODERN_CACHE,
)

PROFILES: dict[str, Profile] = {
    profile.name: profile for profile in (SEED_V2, LIBVIRT_1_0, LIBVIRT_MODERN, QEMU)
}
DEFAULT_PROFILE = LIBVIRT_MODERN.name


def get_profile(name: str) -> Profile:
    """The named profile; a KeyError names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise KeyError(f"unknown profile {name!r} (known: {known})") from None
