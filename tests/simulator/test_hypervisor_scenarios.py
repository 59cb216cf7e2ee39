"""libvirt-rules.md §5, scenarios S2-S30, on the simulated hypervisor, per profile.

Each test names its scenario; expected values come from the rule it cites (§1-§2 for the
2012 code, §5 for the scenario), never from a run of the simulator. Unless a test says
otherwise the modern expectation is §5's, and seed-v2/libvirt-1.0 are tested where the
2012 code decides something else. S1 and the seed's truth table are in
test_hypervisor_seed.py.

Not modelled by the simulator, so not here: S14 (probe identity: no uids or seclabels),
S17 (a multi-disk snapshot without a transaction: snapshots are per disk) and S31 (the
backing names qemu reports: the simulated qemu has none of its own).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from simulator.hypervisor import (
    BackingSpec,
    DiskConfig,
    DiskType,
    Hypervisor,
    OpError,
    Outcome,
)
from simulator.model import Chain, ErrorCode, LayerType
from simulator.profiles import LIBVIRT_1_0, LIBVIRT_MODERN, SEED_V2, Profile
from tests.simulator.hv_helpers import (
    LIBVIRT_PROFILES,
    PROFILES_2012,
    complete,
    disk,
    disk_state,
    files,
    indexes,
    is_2012,
    pivot,
    qcow2_chain,
    qcow2_file,
    raw_file,
    run,
    shape,
    with_cache_rules,
)

MODERN = LIBVIRT_MODERN
KBASE = "(See https://libvirt.org/kbase/backing_chains.html for troubleshooting)"


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """tmp_path without symlinks: the 2012 profiles canonicalise backing names."""
    return tmp_path.resolve()


def three(tmp: Path) -> dict[str, str]:
    """base <- mid <- top, every backing format recorded."""
    return qcow2_chain(tmp, "base.qcow2", "mid.qcow2", "top.qcow2")


# --------------------------------------------------------------------------- S2


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s2_network_hotplug_fails_in_2012(profile, tmp, monkeypatch):
    """S2 / §1.4 f0e72b2f5: 1.0.0 opened an rbd disk's name as a file; the attach failed."""
    monkeypatch.chdir(tmp)
    paths = qcow2_chain(tmp, "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    rbd = DiskConfig("vdb", "pool/image", "raw", type=DiskType.NETWORK)
    outcome = hv.attach("guest", rbd)
    assert outcome.rc == -1
    assert "pool/image" in (outcome.message or "")
    assert hv.domains["guest"].live_disk("vdb") is None


def test_s2_network_hotplug_fixed_in_1_0_1(tmp, monkeypatch):
    """S2: 1.0.1's early return for network disks: nothing is opened, the attach succeeds."""
    monkeypatch.chdir(tmp)
    paths = qcow2_chain(tmp, "top.qcow2")
    hv = Hypervisor(with_cache_rules(LIBVIRT_1_0, network_disks_probed=False))
    run(hv, "guest", disk(paths["top.qcow2"]))
    probes = hv.counters.probes
    assert hv.attach("guest", DiskConfig("vdb", "pool/image", "raw", type=DiskType.NETWORK)).ok
    assert hv.counters.probes == probes
    assert "pool/image" not in hv.granted["guest"]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("name", ["pool/image", "export"])
def test_s2_network_hotplug_modern(fmt, name, tmp, monkeypatch):
    """S2: rbd or nbd hotplug succeeds; no protocol but gluster is traversed, so the chain is
    one element with no terminator, and nothing is opened as a local file."""
    monkeypatch.chdir(tmp)
    paths = qcow2_chain(tmp, "top.qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    probes, read = hv.counters.probes, hv.counters.header_bytes_read
    assert hv.attach("guest", DiskConfig("vdb", name, fmt, type=DiskType.NETWORK)).ok
    chain = hv.chain("guest", "vdb")
    assert chain is not None
    assert [(layer.filename, layer.type) for layer in chain.layers] == [(name, LayerType.NETWORK)]
    assert not chain.terminated
    assert (hv.counters.probes, hv.counters.header_bytes_read) == (probes, read)
    assert name not in hv.granted["guest"]
    assert hv.violations() == []


# --------------------------------------------------------------------------- S3


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s3_unspecified_top_format_is_raw(profile, tmp):
    """S3 (TCK 200/210): no <driver type>: the top is raw and never probed, no backing is
    followed or labelled (2012: allow_disk_format_probing is off by default)."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"], fmt=None))
    assert shape(hv.chain("guest", "vda")) == (((paths["top.qcow2"], "raw"),), True)
    assert hv.granted["guest"] == {paths["top.qcow2"]}
    if profile is MODERN:  # R4: not even opened for a header (2012 read one, then ignored it)
        assert hv.counters.header_bytes_read == 0
    assert hv.violations() == []


# --------------------------------------------------------------------------- S4


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s4_no_cgroup_devices_2012_leaves_chain_empty(profile, tmp):
    """S4 / §1.3: qemuSetupCgroup filled the cache only with the devices controller, so only
    the top is labelled (BZ 896685); the next caller probes lazily."""
    paths = three(tmp)
    hv = Hypervisor(profile, cgroup_devices=False)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.chain("guest", "vda") is None
    assert hv.granted["guest"] == {paths["top.qcow2"]}
    assert hv.counters.probes == 0


def test_s4_no_cgroup_devices_modern_computes_chain(tmp):
    """S4 (82d5fe543): the chain is computed anyway and every backing file is labelled."""
    paths = three(tmp)
    hv = Hypervisor(MODERN, cgroup_devices=False)
    run(hv, "guest", disk(paths["top.qcow2"]))
    expected = [paths["top.qcow2"], paths["mid.qcow2"], paths["base.qcow2"]]
    assert files(hv.chain("guest", "vda")) == expected
    assert hv.granted["guest"] == set(expected)


# --------------------------------------------------------------------------- S5, S6


@pytest.mark.parametrize("fmt", ["raw", "iso", "vdi", "vpc"])
def test_s5_non_backing_format_modern_reads_no_header(fmt, tmp):
    """S5 / R4: a non-backing local format is only checked to exist; chain [top, terminator]."""
    path = raw_file(tmp / f"disk.{fmt}")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(path, fmt=fmt))
    assert shape(hv.chain("guest", "vda")) == (((path, fmt),), True)
    assert hv.counters.probes == 0
    assert hv.counters.header_bytes_read == 0


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s5_raw_disk_missing_fails_start(profile, tmp):
    """S5: a missing raw disk: -1, 'Cannot access storage file' (modern wording); the domain
    does not start (2012: the probe fails, DetermineDiskChain returns -1)."""
    path = str(tmp / "gone.raw")
    hv = Hypervisor(profile)
    assert hv.define("guest", [disk(path, fmt="raw")]).ok
    outcome = hv.start("guest")
    assert outcome.rc == -1
    assert outcome.code == ErrorCode.NOT_FOUND
    if profile is MODERN:
        assert (outcome.message or "").startswith(f"Cannot access storage file '{path}'")
    assert not hv.domains["guest"].running
    assert "guest" not in hv.granted


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s5_raw_disk_2012_is_one_layer(profile, tmp):
    """S5 in 2012: a raw disk's chain is just the top."""
    path = raw_file(tmp / "disk.raw")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(path, fmt="raw"))
    assert files(hv.chain("guest", "vda")) == [path]


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s6_missing_backing_fails_start(profile, tmp):
    """S6: qcow2 top <- missing (-F qcow2): 'Cannot access backing file' and no start."""
    missing = str(tmp / "missing.qcow2")
    top = qcow2_file(tmp / "top.qcow2", missing, "qcow2")
    hv = Hypervisor(profile)
    assert hv.define("guest", [disk(top)]).ok
    outcome = hv.start("guest")
    assert outcome.rc == -1
    assert outcome.code == ErrorCode.BACKING_MISSING
    if profile is MODERN:
        assert outcome.message == (
            f"Cannot access backing file '{missing}' of storage file '{top}': "
            "No such file or directory"
        )
    assert not hv.domains["guest"].running


# --------------------------------------------------------------------------- S7, S8


def unrecorded(tmp: Path, mid_has_backing: bool) -> dict[str, str]:
    """top (no -F) <- mid qcow2 (-F raw) <- base raw; or mid without a backing."""
    base = raw_file(tmp / "base.raw")
    mid = qcow2_file(tmp / "mid.qcow2", base if mid_has_backing else None, "raw")
    top = qcow2_file(tmp / "top.qcow2", mid, None)
    return {"top": top, "mid": mid, "base": base}


def test_s7_unrecorded_backing_format_modern_refuses(tmp):
    """S7 (>= 6.1): mid is probed, is qcow2 with a backing: the start fails."""
    paths = unrecorded(tmp, mid_has_backing=True)
    hv = Hypervisor(MODERN)
    assert hv.define("guest", [disk(paths["top"])]).ok
    outcome = hv.start("guest")
    assert outcome.code == ErrorCode.BACKING_FORMAT_UNSPECIFIED
    assert outcome.message == (
        f"format of backing image '{paths['mid']}' of image '{paths['top']}' was not "
        f"specified in the image metadata {KBASE}"
    )
    assert not hv.domains["guest"].running


def test_s7_unrecorded_backing_without_backing_modern_probed(tmp):
    """S7: if mid has no backing the probe is accepted: [top, mid(qcow2), terminator]."""
    paths = unrecorded(tmp, mid_has_backing=False)
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top"]))
    assert shape(hv.chain("guest", "vda")) == (
        ((paths["top"], "qcow2"), (paths["mid"], "qcow2")),
        True,
    )


@pytest.mark.parametrize("mid_has_backing", [True, False])
@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s7_unrecorded_backing_2012_is_raw(profile, mid_has_backing, tmp):
    """S7 pre-6.0: mid is taken as raw, the chain ends there, base is never labelled."""
    paths = unrecorded(tmp, mid_has_backing)
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top"]))
    layers = shape(hv.chain("guest", "vda"))
    assert layers is not None
    assert layers[0] == ((paths["top"], "qcow2"), (paths["mid"], "raw"))
    assert hv.granted["guest"] == {paths["top"], paths["mid"]}


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s8_protocol_name_as_backing_format(profile, tmp):
    """S8: -F file over a raw base. Read as raw (9.10), as unrecorded and probed (6.1-9.9),
    or as unrecorded and raw (2012): with a raw base every era gets [top, base(raw)]."""
    base = raw_file(tmp / "base.raw")
    top = qcow2_file(tmp / "top.qcow2", base, "file")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    assert shape(hv.chain("guest", "vda")) == (((top, "qcow2"), (base, "raw")), True)


# --------------------------------------------------------------------------- S9


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s9_relative_backing_through_symlink(profile, tmp):
    """S9: a relative backing resolves against the symlink's directory, not the target's."""
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    qcow2_file(tmp / "a" / "top.qcow2", "base.qcow2", "qcow2")
    base = qcow2_file(tmp / "b" / "base.qcow2")
    os.symlink("../a/top.qcow2", tmp / "b" / "link.qcow2")
    link = str(tmp / "b" / "link.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(link))
    chain = hv.chain("guest", "vda")
    assert files(chain) == [link, base]
    assert chain is not None and chain.layers[1].relative_path == "base.qcow2"


def test_s9_modern_does_not_canonicalise(tmp):
    """S9 / §3.6: dirname + '/' + name, no canonicalisation (1.2.6); 1.0 canonicalised."""
    (tmp / "sub").mkdir()
    qcow2_file(tmp / "sub" / "top.qcow2", "base.qcow2", "qcow2")
    qcow2_file(tmp / "sub" / "base.qcow2")
    top = f"{tmp}/sub/../sub/top.qcow2"
    modern, old = Hypervisor(MODERN), Hypervisor(LIBVIRT_1_0)
    run(modern, "guest", disk(top))
    run(old, "guest", disk(top))
    assert files(modern.chain("guest", "vda")) == [top, f"{tmp}/sub/../sub/base.qcow2"]
    assert files(old.chain("guest", "vda")) == [top, f"{tmp}/sub/base.qcow2"]


# --------------------------------------------------------------------------- S10


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s10_self_loop_fails_start(profile, tmp):
    """S10: an image naming itself: 'self-referential' (2012 hash) or 'self-referential or
    too deeply nested' (modern depth limit); the domain does not start."""
    path = str(tmp / "loop.qcow2")
    qcow2_file(path, path, "qcow2")
    hv = Hypervisor(profile)
    assert hv.define("guest", [disk(path)]).ok
    outcome = hv.start("guest")
    assert outcome.rc == -1
    if is_2012(profile):
        assert outcome.code == ErrorCode.BACKING_LOOP
        assert outcome.message == f"backing store for {path} is self-referential"
    else:
        assert outcome.code == ErrorCode.TOO_DEEP
        assert "is self-referential or too deeply nested" in (outcome.message or "")
    assert not hv.domains["guest"].running


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s10_mutual_loop_fails_start(profile, tmp):
    """S10: a <-> b is an error too."""
    a, b = str(tmp / "a.qcow2"), str(tmp / "b.qcow2")
    qcow2_file(a, b, "qcow2")
    qcow2_file(b, a, "qcow2")
    hv = Hypervisor(profile)
    assert hv.define("guest", [disk(a)]).ok
    outcome = hv.start("guest")
    assert outcome.rc == -1
    expected = ErrorCode.BACKING_LOOP if is_2012(profile) else ErrorCode.TOO_DEEP
    assert outcome.code == expected


# --------------------------------------------------------------------------- S11


def deep(tmp: Path, layers: int) -> dict[str, str]:
    names = [f"l{number:03d}.qcow2" for number in range(layers)]
    return qcow2_chain(tmp, *names, cluster_bits=9)


def test_s11_201_layers_refused_modern(tmp):
    """S11 / R5: more than 200 layers: start, hotplug and media change fail (the crawler's
    max_depth of 200 or qemuDomainStorageSourceValidateDepth, both too-deep)."""
    paths = deep(tmp, 201)
    top = paths["l200.qcow2"]
    hv = Hypervisor(MODERN)
    assert hv.define("guest", [disk(top)]).ok
    outcome = hv.start("guest")
    assert outcome.rc == -1 and outcome.code == ErrorCode.TOO_DEEP
    assert not hv.domains["guest"].running

    small = qcow2_chain(tmp, "small.qcow2")["small.qcow2"]
    cdrom = raw_file(tmp / "cd.iso")
    assert hv.define("guest", [disk(small), disk(cdrom, "hdc", "raw", device="cdrom")]).ok
    assert hv.start("guest").ok
    assert hv.attach("guest", disk(top, "vdb")).code == ErrorCode.TOO_DEEP
    assert hv.change_media("guest", "hdc", top, "qcow2").code == ErrorCode.TOO_DEEP
    assert files(hv.chain("guest", "hdc")) == [cdrom]


def test_s11_snapshot_on_200_layers_refused_modern(tmp):
    """S11: a 200-layer chain starts; an external snapshot is refused (add = 1)."""
    paths = deep(tmp, 200)
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["l199.qcow2"]))
    assert len(hv.chain("guest", "vda") or ()) == 200
    overlay = str(tmp / "ov.qcow2")
    outcome = hv.snapshot("guest", "vda", overlay)
    assert outcome.code == ErrorCode.TOO_DEEP
    assert outcome.message == (
        "backing chains more than 200 layers deep are not supported for disk 'vda'"
    )
    assert not os.path.exists(overlay)
    assert len(hv.chain("guest", "vda") or ()) == 200
    assert disk_state(hv, "guest").config.path == paths["l199.qcow2"]


def test_s11_snapshot_to_200_layers_allowed_modern(tmp):
    """S11: 199 layers plus the overlay is 200: allowed."""
    paths = deep(tmp, 199)
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["l198.qcow2"]))
    assert hv.snapshot("guest", "vda", str(tmp / "ov.qcow2")).ok
    assert len(hv.chain("guest", "vda") or ()) == 200


def test_s11_2012_has_no_depth_limit(tmp):
    """S11 / §6: 2012 had no depth limit (loops were found by the hash): 201 layers start."""
    paths = deep(tmp, 201)
    hv = Hypervisor(LIBVIRT_1_0)
    run(hv, "guest", disk(paths["l200.qcow2"]))
    assert len(hv.chain("guest", "vda") or ()) == 201


# --------------------------------------------------------------------------- S12, S13


def test_s12_backing_name_over_1023_bytes_is_no_backing_modern(tmp):
    """S12 / §3.4 (34e317cfd): backing_file_size > 1023 reads as no backing, no error."""
    top = qcow2_file(tmp / "top.qcow2", "/" + "x" * 1100, "qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(top))
    assert shape(hv.chain("guest", "vda")) == (((top, "qcow2"),), True)


@pytest.mark.parametrize("profile", [SEED_V2, LIBVIRT_1_0], ids=["seed-v2", "libvirt-1.0"])
def test_s13_format_none_gets_default_format_and_chain(profile, tmp):
    """S13 (a391a9c5b): format NONE does not bypass the default format: raw, and a chain."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"], fmt="none"))
    assert shape(hv.chain("guest", "vda")) == (((paths["top.qcow2"], "raw"),), True)


def test_format_none_refused_by_modern_definition(tmp):
    """libvirt 9.0's parser refuses a format it has no value above NONE for."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(MODERN)
    outcome = hv.define("guest", [disk(paths["top.qcow2"], fmt="none")])
    assert (outcome.rc, outcome.code) == (-1, ErrorCode.UNKNOWN_FORMAT.value)
    assert "guest" not in hv.domains


def test_s13_volume_disk_without_format_modern(tmp):
    """S13: a volume disk with no format gets the default format, not 'none'."""
    path = raw_file(tmp / "vol.raw")
    hv = Hypervisor(MODERN)
    run(hv, "guest", DiskConfig("vda", path, None, type=DiskType.VOLUME))
    chain = hv.chain("guest", "vda")
    assert chain is not None
    assert chain.top.format == "raw"


# --------------------------------------------------------------------------- S15


def test_s15_snapshot_modern_models_the_chain(tmp):
    """S15: [ov, top(index 1), base(index 2), terminator]; nothing probed; the overlay gets
    a new index (a per-domain counter only counts up)."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    before = indexes(hv.chain("guest", "vda"))
    assert before == [1, 2]
    probes = hv.counters.probes
    ov = str(tmp / "ov.qcow2")
    assert hv.snapshot("guest", "vda", ov).ok
    chain = hv.chain("guest", "vda")
    assert files(chain) == [ov, paths["top.qcow2"], paths["base.qcow2"]]
    assert chain is not None and chain.terminated
    assert indexes(chain)[1:] == [1, 2]
    assert indexes(chain)[0] > max(before)
    assert hv.counters.probes == probes
    assert hv.domains["guest"].config[0].path == ov
    assert hv.granted["guest"] == {ov, paths["top.qcow2"], paths["base.qcow2"]}
    assert hv.violations() == []
    second = str(tmp / "ov2.qcow2")
    assert hv.snapshot("guest", "vda", second).ok
    assert indexes(hv.chain("guest", "vda"))[0] > indexes(chain)[0]


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s15_snapshot_2012_drops_the_cache(profile, tmp):
    """S15 / §1.2 point 5: the cache is nuked; the next caller probes while qemu holds the
    new top open for writing; until then only ov is walked (at stop, only ov is revoked)."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    ov = str(tmp / "ov.qcow2")
    assert hv.snapshot("guest", "vda", ov).ok
    assert hv.chain("guest", "vda") is None
    assert hv.violations() == []

    probes, open_probes = hv.counters.probes, hv.counters.probes_of_open_files
    assert hv.block_commit("guest", "vda", top=paths["top.qcow2"]).ok
    assert hv.counters.probes == probes + 1
    assert hv.counters.probes_of_open_files == open_probes + 1
    assert files(hv.chain("guest", "vda")) == [ov, paths["top.qcow2"], paths["base.qcow2"]]


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s15_2012_stop_after_snapshot_revokes_only_the_top(profile, tmp):
    """S15 / §2.3: with the cache empty at stop only disk->src is revoked."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    ov = str(tmp / "ov.qcow2")
    assert hv.snapshot("guest", "vda", ov).ok
    assert hv.destroy("guest").ok
    assert hv.granted["guest"] == {paths["top.qcow2"], paths["base.qcow2"]}


# --------------------------------------------------------------------------- S16


def test_s16_reuse_overlay_with_wrong_backing_modern_keeps_own_chain(tmp):
    """S16 (7456c4f5f): the chain below a REUSE_EXT overlay is libvirt's, not what the
    overlay records; that difference is documented, not a violation."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    wrong = qcow2_file(tmp / "wrong.qcow2")
    ov = qcow2_file(tmp / "ov.qcow2", wrong, "qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    probes = hv.counters.probes
    assert hv.snapshot("guest", "vda", ov, reuse=True).ok
    assert files(hv.chain("guest", "vda")) == [ov, paths["top.qcow2"], paths["base.qcow2"]]
    assert hv.counters.probes == probes
    assert wrong not in hv.granted["guest"]
    assert hv.violations() == []


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s16_reuse_overlay_with_wrong_backing_2012_redetects_it(profile, tmp):
    """S16: 2012 dropped the cache, so the next caller detected the overlay's wrong backing
    ('this might end up in redetecting wrong data')."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    elsewhere = qcow2_chain(tmp, "w-base.qcow2", "wrong.qcow2")
    wrong, w_base = elsewhere["wrong.qcow2"], elsewhere["w-base.qcow2"]
    ov = qcow2_file(tmp / "ov.qcow2", wrong, "qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.snapshot("guest", "vda", ov, reuse=True).ok
    assert hv.chain("guest", "vda") is None
    assert hv.block_commit("guest", "vda", top=wrong).ok  # §1.3: commit probes the chain
    assert files(hv.chain("guest", "vda")) == [ov, wrong, w_base]


def test_s16_reuse_overlay_relative_name_becomes_relpath_modern(tmp):
    """S16 (e20853e1d, 3.5.0): relPath comes from the overlay's backing string, so a block
    commit can name the old top as the overlay does."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    ov = qcow2_file(tmp / "ov.qcow2", "top.qcow2", "qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.snapshot("guest", "vda", ov, reuse=True).ok
    chain = hv.chain("guest", "vda")
    assert chain is not None and chain.layers[1].relative_path == "top.qcow2"
    assert hv.block_commit("guest", "vda", top="top.qcow2").ok
    job = hv.jobs[disk_state(hv, "guest").job]
    assert (job.top, job.base) == (paths["top.qcow2"], paths["base.qcow2"])
    assert hv.violations() == []


# --------------------------------------------------------------------------- S18


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s18_full_pull(profile, tmp):
    """S18: base <- mid <- top, pull without base: [top, terminator] (modern models it,
    7.3.0's terminator; 2012 re-probes after PULL). Modern revokes mid and base."""
    paths = three(tmp)
    top = paths["top.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    top_index = indexes(hv.chain("guest", "vda"))[0]
    assert hv.block_pull("guest", "vda").ok
    assert hv.job_step("guest", "vda").ok
    assert hv.violations() == []  # the event is pending: a documented window
    hv.deliver_all()
    chain = hv.chain("guest", "vda")
    assert shape(chain) == (((top, "qcow2"),), True)
    assert indexes(chain) == [top_index]
    assert hv.domains["guest"].config == [disk(top)]  # nothing detected is persisted
    assert disk_state(hv, "guest").job is None
    if profile is MODERN:
        assert hv.granted["guest"] == {top}
    assert hv.violations() == []


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s18_pull_with_base(profile, tmp):
    """S18: pull with base=base: [top, base, terminator]; modern revokes mid only."""
    paths = three(tmp)
    top, base = paths["top.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    before = hv.chain("guest", "vda")
    assert before is not None
    assert hv.block_pull("guest", "vda", base=base).ok
    complete(hv, "guest")
    chain = hv.chain("guest", "vda")
    assert shape(chain) == (((top, "qcow2"), (base, "qcow2")), True)
    if profile is MODERN:
        assert indexes(chain) == [before.layers[0].index, before.layers[2].index]
        assert hv.granted["guest"] == {top, base}
    assert hv.violations() == []


# --------------------------------------------------------------------------- S19


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s19_intermediate_commit(profile, tmp):
    """S19: commit top=mid base=base: [top, base]. Modern models it and revokes mid; 1.0
    re-probes after COMMIT (3f38c7e3a); seed-v2 re-probes only after PULL, so its cache
    keeps mid in a documented stale window."""
    paths = three(tmp)
    top, mid, base = paths["top.qcow2"], paths["mid.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    assert hv.block_commit("guest", "vda", top=mid, base=base).ok
    complete(hv, "guest")
    if profile is SEED_V2:
        assert files(hv.chain("guest", "vda")) == [top, mid, base]
        assert disk_state(hv, "guest").stale_reason is not None
    else:
        assert shape(hv.chain("guest", "vda")) == (((top, "qcow2"), (base, "qcow2")), True)
    if profile is MODERN:
        assert hv.granted["guest"] == {top, base}
    assert os.path.exists(mid)
    assert hv.violations() == []


def test_s19_commit_delete_removes_mid_modern(tmp):
    """S19: with VIR_DOMAIN_BLOCK_COMMIT_DELETE mid is deleted from disk."""
    paths = three(tmp)
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.block_commit("guest", "vda", top=paths["mid.qcow2"], delete=True).ok
    complete(hv, "guest")
    assert not os.path.exists(paths["mid.qcow2"])
    assert files(hv.chain("guest", "vda")) == [paths["top.qcow2"], paths["base.qcow2"]]
    assert hv.violations() == []


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s19_commit_validation(profile, tmp):
    """S19 / §1.3 (0a220e222): top not found, top without backing, base not below top,
    SHALLOW with a base not immediately below, the active layer without the active flag."""
    paths = qcow2_chain(tmp, "base.qcow2", "m1.qcow2", "m2.qcow2", "top.qcow2")
    top, m2, m1, base = (paths[n] for n in ("top.qcow2", "m2.qcow2", "m1.qcow2", "base.qcow2"))
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))

    def commit(**kwargs: Any) -> Outcome:
        return hv.block_commit("guest", "vda", **kwargs)

    assert commit(top=str(tmp / "nowhere.qcow2")).code == OpError.TOP_NOT_FOUND
    no_backing = commit(top=base)
    if profile is MODERN:
        # The bottom layer's backing is the terminator: the base lookup is what fails.
        assert no_backing.code == OpError.BASE_NOT_FOUND
        assert no_backing.message == "could not find base image in chain for 'vda'"
    else:
        assert no_backing.code == OpError.TOP_HAS_NO_BACKING
        assert no_backing.message == f"top '{base}' in chain for 'vda' has no backing file"
    assert commit(top=m1, base=m2).code == OpError.BASE_NOT_FOUND
    shallow = commit(top=m2, base=base, shallow=True)
    assert shallow.code == OpError.BASE_NOT_BELOW_TOP
    # libvirt 9.0 names the disk's source, not its target, at the end (observed).
    assert shallow.message == (
        f"base '{base}' is not immediately below '{m2}' in chain for '{top}'"
    )
    for active_layer in (None, top):
        refused = commit(top=active_layer)
        assert refused.rc == -1
        if profile is MODERN:
            assert refused.code == OpError.ACTIVE_COMMIT_NEEDS_FLAG
        else:  # 2012: committing the active layer was not supported at all
            assert refused.code == OpError.UNSUPPORTED
    assert hv.jobs == {}
    assert commit(top=m2, base=m1, shallow=True).ok


# --------------------------------------------------------------------------- S20


def test_s20_active_commit_pivot_modern(tmp):
    """S20: active commit top -> mid and pivot: disk->src becomes mid, the chain [mid, ...]
    keeps its indexes so vda[N] names mid's backing; the config is rewritten to mid; the old
    top leaves the chain and its access is revoked (as S18's removed images)."""
    paths = qcow2_chain(tmp, "base.qcow2", "low.qcow2", "mid.qcow2", "top.qcow2")
    top, mid, low, base = (paths[n] for n in ("top.qcow2", "mid.qcow2", "low.qcow2", "base.qcow2"))
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(top))
    before = hv.chain("guest", "vda")
    assert before is not None
    assert hv.block_commit("guest", "vda", base=mid, active=True).ok
    assert hv.block_job_pivot("guest", "vda").code == OpError.JOB_NOT_READY
    assert pivot(hv, "guest").ok
    chain = hv.chain("guest", "vda")
    assert shape(chain) == (((mid, "qcow2"), (low, "qcow2"), (base, "qcow2")), True)
    assert indexes(chain) == [layer.index for layer in before.layers[1:]]
    live = disk_state(hv, "guest")
    assert (live.config.path, live.job) == (mid, None)
    assert hv.domains["guest"].config[0].path == mid
    assert hv.granted["guest"] == {mid, low, base}
    assert hv.violations() == []

    low_index, base_index = indexes(chain)[1:]
    assert hv.block_commit("guest", "vda", top=f"vda[{low_index}]", base=f"vda[{base_index}]").ok
    job = hv.jobs[disk_state(hv, "guest").job]
    assert (job.top, job.base) == (low, base)


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s20_active_commit_unsupported_2012(profile, tmp):
    """S20: 2012 could not commit the active layer (§1.3, 'flags unsupported')."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.block_commit("guest", "vda", active=True).code == OpError.UNSUPPORTED
    assert hv.jobs == {}


# --------------------------------------------------------------------------- S21


@pytest.mark.parametrize("shallow", [False, True], ids=["full", "shallow"])
@pytest.mark.parametrize("profile", [LIBVIRT_1_0, MODERN], ids=["libvirt-1.0", "modern"])
def test_s21_copy_and_pivot(profile, shallow, tmp):
    """S21: pivot makes the mirror the disk; a full copy has no backing, a shallow one keeps
    the old backing chain (modern inherits it; 1.0 probes the mirror at pivot, §1.3)."""
    paths = three(tmp)
    top, mid, base = paths["top.qcow2"], paths["mid.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    before = hv.chain("guest", "vda")
    assert before is not None
    dest = str(tmp / "copy.qcow2")
    assert hv.block_copy("guest", "vda", dest, shallow=shallow).ok
    assert os.path.exists(dest)
    assert pivot(hv, "guest").ok
    chain = hv.chain("guest", "vda")
    expected = [dest, mid, base] if shallow else [dest]
    assert files(chain) == expected
    assert chain is not None and chain.terminated
    assert disk_state(hv, "guest").config.path == dest
    if profile is MODERN:  # the old chain leaves qemu: revoked, as S18's removed images
        assert hv.granted["guest"] == set(expected)
    else:  # 5a3501be9: the mirror's chain is labelled at pivot
        assert hv.granted["guest"] >= set(expected)
    if profile is MODERN and shallow:
        assert indexes(chain)[1:] == indexes(before)[1:]
        assert indexes(chain)[0] > max(indexes(before))
    assert hv.violations() == []


def test_s21_reuse_copy_keeps_only_the_destination_modern(tmp):
    """S21, as libvirt 9.0 does it: after the pivot to a REUSE_EXT destination the chain is
    the destination alone; what its header records below it is neither detected nor kept."""
    paths = three(tmp)
    other = qcow2_file(tmp / "other.qcow2")
    dest = qcow2_file(tmp / "copy.qcow2", other, "qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.block_copy("guest", "vda", dest, reuse=True).ok
    assert pivot(hv, "guest").ok
    assert shape(hv.chain("guest", "vda")) == (((dest, "qcow2"),), True)
    assert hv.granted["guest"] == {dest}
    assert hv.violations() == []


@pytest.mark.parametrize("reuse", [False, True], ids=["new", "reuse"])
@pytest.mark.parametrize("profile", [LIBVIRT_1_0, MODERN], ids=["libvirt-1.0", "modern"])
def test_s21_copy_abort_keeps_chain(profile, reuse, tmp):
    """S21: abort: the chain is unchanged, the mirror removed (the file stays)."""
    paths = three(tmp)
    dest = str(tmp / "copy.qcow2")
    if reuse:
        qcow2_file(dest)
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    before = hv.chain("guest", "vda")
    granted = set(hv.granted["guest"])
    assert hv.block_copy("guest", "vda", dest, reuse=reuse).ok
    assert hv.job_step("guest", "vda").ok
    hv.deliver_all()
    assert hv.block_job_abort("guest", "vda").ok
    assert hv.chain("guest", "vda") == before
    live = disk_state(hv, "guest")
    assert (live.config.path, live.job) == (paths["top.qcow2"], None)
    assert hv.jobs == {}
    assert os.path.exists(dest)
    assert hv.granted["guest"] == granted
    assert hv.violations() == []


# --------------------------------------------------------------------------- S22


def two_pulls(
    directory: Path, profile: Profile, reverse: bool
) -> dict[str, list[tuple[str, str, int]]]:
    directory.mkdir()
    a = qcow2_chain(directory, "a-base.qcow2", "a-mid.qcow2", "a-top.qcow2")
    b = qcow2_chain(directory, "b-base.qcow2", "b-mid.qcow2", "b-top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(a["a-top.qcow2"]), disk(b["b-top.qcow2"], "vdb"))
    assert hv.block_pull("guest", "vda").ok
    assert hv.block_pull("guest", "vdb", base=b["b-base.qcow2"]).ok
    assert hv.job_step("guest", "vda").ok
    assert hv.job_step("guest", "vdb").ok
    assert hv.deliver_all((lambda events: events[::-1]) if reverse else None) == 2
    result = {}
    for target in ("vda", "vdb"):
        chain = hv.chain("guest", target)
        assert chain is not None
        result[target] = [
            (os.path.basename(layer.filename), layer.format, layer.index) for layer in chain.layers
        ]
    assert hv.violations() == []
    return result


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s22_two_completions_in_either_order(profile, tmp):
    """S22 (1a92c7191): two completion events handled back to back, in either order, leave
    the same chains."""
    in_order = two_pulls(tmp / "in-order", profile, reverse=False)
    reversed_ = two_pulls(tmp / "reversed", profile, reverse=True)
    assert in_order == reversed_
    assert [name for name, _, _ in in_order["vda"]] == ["a-top.qcow2"]
    assert [name for name, _, _ in in_order["vdb"]] == ["b-top.qcow2", "b-base.qcow2"]


@pytest.mark.parametrize("profile", [LIBVIRT_1_0, MODERN], ids=["libvirt-1.0", "modern"])
def test_s22_pivot_returns_with_chain_updated(profile, tmp):
    """S22 (630ee5ac6): a synchronous pivot returns with the chain already updated: no event
    is left to deliver."""
    paths = three(tmp)
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    dest = str(tmp / "copy.qcow2")
    assert hv.block_copy("guest", "vda", dest).ok
    complete(hv, "guest")
    assert hv.block_job_pivot("guest", "vda").ok
    assert hv.events.pending == []
    assert files(hv.chain("guest", "vda")) == [dest]


# --------------------------------------------------------------------------- S23, S24


def test_s23_index_addressing_after_pull_modern(tmp):
    """S23: vda[N] uses the stored ids after a job changed the chain."""
    paths = qcow2_chain(tmp, "base.qcow2", "m1.qcow2", "m2.qcow2", "top.qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    start = hv.chain("guest", "vda")
    ids = dict(zip(files(start) or (), indexes(start), strict=True))
    m1, m2, base = paths["m1.qcow2"], paths["m2.qcow2"], paths["base.qcow2"]
    assert hv.block_pull("guest", "vda", base=f"vda[{ids[m1]}]").ok
    complete(hv, "guest")
    assert files(hv.chain("guest", "vda")) == [paths["top.qcow2"], m1, base]
    assert hv.block_commit("guest", "vda", top=f"vda[{ids[m2]}]").code == OpError.TOP_NOT_FOUND
    assert hv.block_commit("guest", "vda", top=f"vda[{ids[m1]}]", base=f"vda[{ids[base]}]").ok
    job = hv.jobs[disk_state(hv, "guest").job]
    assert (job.top, job.base) == (m1, base)


def test_s24_destination_used_twice_modern(tmp):
    """S24 (6.6.0): commit into the same base twice, copy to the same destination twice."""
    paths = qcow2_chain(tmp, "base.qcow2", "m1.qcow2", "m2.qcow2", "top.qcow2")
    top, base = paths["top.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(top))
    assert hv.block_commit("guest", "vda", top=paths["m1.qcow2"], base=base).ok
    complete(hv, "guest")
    assert hv.block_commit("guest", "vda", top=paths["m2.qcow2"], base=base).ok
    complete(hv, "guest")
    assert files(hv.chain("guest", "vda")) == [top, base]
    dest = str(tmp / "copy.qcow2")
    assert hv.block_copy("guest", "vda", dest).ok
    assert hv.block_job_abort("guest", "vda").ok
    assert hv.block_copy("guest", "vda", dest, reuse=True).ok
    assert pivot(hv, "guest").ok
    assert files(hv.chain("guest", "vda")) == [dest]
    assert hv.violations() == []


# --------------------------------------------------------------------------- S25, S26


def test_s25_restart_modern_keeps_chain(tmp):
    """S25: the chain comes from the status XML: no re-probe, indexes unchanged; a backing
    deleted while the daemon was down does not fail the reconnect."""
    paths = three(tmp)
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    before = hv.chain("guest", "vda")
    probes = hv.counters.probes
    assert hv.daemon_restart().ok
    assert hv.chain("guest", "vda") == before
    assert indexes(hv.chain("guest", "vda")) == indexes(before)
    assert hv.delete_file(paths["base.qcow2"]).ok
    assert hv.daemon_restart().ok
    assert hv.domains["guest"].running
    assert hv.chain("guest", "vda") == before
    assert hv.counters.probes == probes
    assert hv.violations() == []  # the deletion is a documented window (stale_reason)


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s25_restart_2012_loses_chain(profile, tmp):
    """S25 / §2.3: 1.0.0-1.2.4 lost the cache; the next caller re-probes; reconnect probes
    nothing, so a backing deleted while down cannot fail it, only that next caller."""
    paths = three(tmp)
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    probes = hv.counters.probes
    assert hv.daemon_restart().ok
    assert hv.chain("guest", "vda") is None
    assert hv.counters.probes == probes
    assert hv.block_commit("guest", "vda", top=paths["mid.qcow2"]).ok
    assert hv.counters.probes == probes + 1
    assert files(hv.chain("guest", "vda")) == [
        paths["top.qcow2"],
        paths["mid.qcow2"],
        paths["base.qcow2"],
    ]


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s25_restart_2012_with_backing_deleted(profile, tmp):
    """S25: a backing deleted while the 2012 daemon is down: reconnect succeeds, the VM keeps
    running, the next caller fails with a real error."""
    paths = three(tmp)
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.delete_file(paths["base.qcow2"]).ok
    assert hv.daemon_restart().ok
    assert hv.domains["guest"].running
    outcome = hv.block_commit("guest", "vda", top=paths["mid.qcow2"])
    assert outcome.code == ErrorCode.BACKING_MISSING


def test_s26_job_completed_while_down_modern_replayed(tmp):
    """S26 (d3158852fa): a pull that finished while the daemon was down is replayed from the
    status XML: the same transition as S18, nothing probed."""
    paths = three(tmp)
    top, base = paths["top.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(top))
    assert hv.block_pull("guest", "vda", base=base).ok
    assert hv.job_step("guest", "vda").ok  # qemu finishes; the daemon is down
    probes = hv.counters.probes
    assert hv.daemon_restart().ok
    assert shape(hv.chain("guest", "vda")) == (((top, "qcow2"), (base, "qcow2")), True)
    assert hv.counters.probes == probes
    assert disk_state(hv, "guest").job is None
    assert hv.granted["guest"] == {top, base}
    assert hv.violations() == []


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s26_job_completed_while_down_2012_event_lost(profile, tmp):
    """S26 / §2.3: 2012 loses the event and the cache; qemu's job is over, so the next caller
    can start a job, and it re-probes the files as qemu left them."""
    paths = qcow2_chain(tmp, "base.qcow2", "m1.qcow2", "m2.qcow2", "top.qcow2")
    top, m1, base = paths["top.qcow2"], paths["m1.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    assert hv.block_pull("guest", "vda", base=m1).ok
    assert hv.job_step("guest", "vda").ok
    assert hv.daemon_restart().ok
    assert hv.events.pending == []
    assert hv.chain("guest", "vda") is None
    probes = hv.counters.probes
    assert hv.block_commit("guest", "vda", top=m1, base=base).ok
    assert hv.counters.probes == probes + 1
    assert files(hv.chain("guest", "vda")) == [top, m1, base]
    assert hv.violations() == []


def test_s26_qemu_commits_without_libvirts_cache(tmp):
    """S26 / §2.3: a 1.0 daemon restarts during a commit; qemu still finishes it (qemu, not
    libvirt's lost cache, knows the chain), and the forced re-probe sees [top, base]."""
    paths = three(tmp)
    top, mid, base = paths["top.qcow2"], paths["mid.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(LIBVIRT_1_0)
    run(hv, "guest", disk(top))
    assert hv.block_commit("guest", "vda", top=mid, base=base).ok
    assert hv.daemon_restart().ok
    assert hv.chain("guest", "vda") is None
    complete(hv, "guest")
    assert files(hv.chain("guest", "vda")) == [top, base]
    assert hv.violations() == []


# --------------------------------------------------------------------------- S27


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s27_stop_start_after_snapshot_and_pull(profile, tmp):
    """S27 (fe7ef7b11): the next start re-detects from the files and the user part of the
    config; detected layers are never persisted to the inactive definition."""
    paths = three(tmp)
    top, base = paths["top.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    ov = str(tmp / "ov.qcow2")
    assert hv.snapshot("guest", "vda", ov).ok
    assert hv.block_pull("guest", "vda", base=base).ok
    complete(hv, "guest")
    assert hv.domains["guest"].config == [disk(ov)]
    assert hv.destroy("guest").ok
    assert hv.domains["guest"].config == [disk(ov)]

    probes = hv.counters.probes
    assert hv.start("guest").ok
    assert hv.counters.probes == probes + 1
    assert files(hv.chain("guest", "vda")) == [ov, base]
    assert hv.destroy("guest").ok
    # files changed while the domain is off are what the next start sees
    assert hv.rewrite_header(ov, top, "qcow2").ok
    assert hv.start("guest").ok
    assert files(hv.chain("guest", "vda")) == [ov, top, paths["mid.qcow2"], base]
    assert hv.domains["guest"].config == [disk(ov)]
    assert hv.violations() == []


# --------------------------------------------------------------------------- S28


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s28_unplug_revokes(profile, tmp):
    """S28 (BZ 876828): modern revokes the cached chain; 1.0.0 computed the paths from the
    detach XML, which has no chain, so only the top was revoked."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    root = qcow2_chain(tmp, "root.qcow2")["root.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(root))
    assert hv.attach("guest", disk(paths["top.qcow2"], "vdb")).ok
    assert hv.granted["guest"] == {root, paths["top.qcow2"], paths["base.qcow2"]}
    assert hv.detach("guest", "vdb").ok
    if profile is MODERN:
        assert hv.granted["guest"] == {root}
    else:
        assert hv.granted["guest"] == {root, paths["base.qcow2"]}


# --------------------------------------------------------------------------- S29


def test_s29_terminated_user_chain_not_probed_modern(tmp):
    """S29 / R3: a terminated <backingStore> is trusted: nothing is probed, the XML's format
    wins over the header's."""
    paths = three(tmp)
    top, mid = paths["top.qcow2"], paths["mid.qcow2"]
    hv = Hypervisor(MODERN)
    config = disk(top, backing=(BackingSpec(mid, "raw"),), backing_terminated=True)
    run(hv, "guest", config)
    assert shape(hv.chain("guest", "vda")) == (((top, "qcow2"), (mid, "raw")), True)
    assert hv.counters.probes == 0
    assert hv.counters.header_bytes_read == 0
    assert hv.granted["guest"] == {top, mid}
    assert hv.domains["guest"].config == [config]


def test_s29_missing_user_element_fails_modern(tmp):
    """S29: a missing element of the user's chain: 'Cannot access backing file'."""
    paths = three(tmp)
    top, base = paths["top.qcow2"], paths["base.qcow2"]
    gone = str(tmp / "gone.qcow2")
    hv = Hypervisor(MODERN)
    backing = (BackingSpec(gone, "qcow2"), BackingSpec(base, "qcow2"))
    assert hv.define("guest", [disk(top, backing=backing, backing_terminated=True)]).ok
    outcome = hv.start("guest")
    assert outcome.code == ErrorCode.BACKING_MISSING
    assert (outcome.message or "").startswith(
        f"Cannot access backing file '{gone}' of storage file '{top}'"
    )
    assert not hv.domains["guest"].running


def test_s29_partial_user_chain_probed_below_modern(tmp):
    """S29: an unterminated user chain is probed from its last element down."""
    paths = three(tmp)
    top, mid, base = paths["top.qcow2"], paths["mid.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(top, backing=(BackingSpec(mid, "qcow2"),)))
    assert shape(hv.chain("guest", "vda")) == (
        ((top, "qcow2"), (mid, "qcow2"), (base, "qcow2")),
        True,
    )
    assert hv.counters.probes == 1
    assert hv.granted["guest"] == {top, mid, base}


def test_s29_empty_terminator_means_no_backing_modern(tmp):
    """S29: an empty <backingStore/> on a qcow2 with a backing: the user's choice wins."""
    paths = three(tmp)
    top = paths["top.qcow2"]
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(top, backing_terminated=True))
    assert shape(hv.chain("guest", "vda")) == (((top, "qcow2"),), True)
    assert hv.counters.probes == 0
    assert hv.granted["guest"] == {top}
    assert hv.violations() == []


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s29_user_chain_ignored_2012(profile, tmp):
    """S29: <backingStore> on input is honoured only since 5.10: 2012 probes the files."""
    paths = three(tmp)
    top, mid, base = paths["top.qcow2"], paths["mid.qcow2"], paths["base.qcow2"]
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top, backing=(BackingSpec(mid, "raw"),), backing_terminated=True))
    assert files(hv.chain("guest", "vda")) == [top, mid, base]


# --------------------------------------------------------------------------- S30


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_s30_unterminated_chain_stays_unterminated(profile, tmp):
    """S30 (a693fdba0): a chain whose end is unknown (an nbd backing) stays unknown; modern
    keeps it across a restart (the status XML round trip); 2012 re-probes the same."""
    top = qcow2_file(tmp / "top.qcow2", "nbd://example.org/export", "raw")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(top))
    chain = hv.chain("guest", "vda")
    assert chain is not None and not chain.terminated
    if profile is MODERN:
        assert [(layer.type, layer.protocol) for layer in chain.layers] == [
            (LayerType.FILE, None),
            (LayerType.NETWORK, "nbd"),
        ]
    assert hv.daemon_restart().ok
    if is_2012(profile):  # the next caller's DetermineDiskChain(force=false) probes again
        domain = hv.domains["guest"]
        assert hv.determine_disk_chain(domain, disk_state(hv, "guest"), False).ok
    after = hv.chain("guest", "vda")
    assert after is not None and not after.terminated
    assert shape(after) == shape(chain)
    assert hv.violations() == []


def test_snapshot_after_a_failed_forced_reprobe_modern(tmp):
    """Nothing cached (the forced re-probe failed): the overlay goes over the old top alone,
    whose end is unknown, instead of the simulator failing."""
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    os.unlink(paths["base.qcow2"])
    domain = hv.domains["guest"]
    live = domain.live_disk("vda")
    assert live is not None
    assert not hv.determine_disk_chain(domain, live, True).ok
    overlay = str(tmp / "ov.qcow2")
    assert hv.snapshot("guest", "vda", overlay).ok
    chain = hv.chain("guest", "vda")
    assert chain is not None
    assert [layer.filename for layer in chain.layers] == [overlay, paths["top.qcow2"]]
    assert chain.terminated is False


# --------------------------------------------------------------------------- qemu's descriptors


def test_a_pull_writes_the_top_qemu_holds_even_once_unreadable(tmp):
    """qemu opened the top before it became unreadable: its pull completes and the file's
    header loses its backing; only the manager's later opens are refused."""
    paths = three(tmp)
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.block_pull("guest", "vda").ok
    assert hv.make_unreadable(paths["top.qcow2"]).ok
    assert hv.job_wait("guest", "vda").ok
    assert files(hv.chain("guest", "vda")) == [paths["top.qcow2"]]
    hv.storage.unreadable.clear()
    fresh = hv.fresh_chain(disk(paths["top.qcow2"]))
    assert isinstance(fresh, Chain)
    assert files(fresh) == [paths["top.qcow2"]]


def test_a_deleted_top_takes_the_pull_s_write_with_it(tmp):
    """The top deleted while a pull runs is still qemu's: the pull completes into the
    unlinked file, and a file made at the path afterwards is untouched by it."""
    paths = three(tmp)
    hv = Hypervisor(MODERN)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.block_pull("guest", "vda").ok
    assert hv.delete_file(paths["top.qcow2"]).ok
    assert hv.replace_file(paths["top.qcow2"], Path(paths["mid.qcow2"]).read_bytes()).ok
    assert hv.job_wait("guest", "vda").ok
    assert files(hv.chain("guest", "vda")) == [paths["top.qcow2"]]
    fresh = hv.fresh_chain(disk(paths["top.qcow2"]))
    assert isinstance(fresh, Chain)
    assert files(fresh) == [paths["top.qcow2"], paths["base.qcow2"]]
