"""The cache invariant: ``violations()`` names no cached chain that differs from the files
outside a documented window (a disk's ``stale_reason``), for every operation under every
profile, and for the faults a test can inject (a file deleted, replaced, made unreadable,
its header rewritten) before and during operations.

The windows are the ones libvirt-rules.md documents: a completion event not yet handled
(§5 S22), seed-v2 not re-probing after a commit (§1.2 point 5), 2012's media change keeping
the old chain, a reused overlay whose recorded backing is not trusted (S16), and files
changed behind libvirt's back (S25: nothing re-probes a running domain's chain).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from simulator.formats import qcow2
from simulator.hypervisor import Hypervisor, OpError
from simulator.profiles import LIBVIRT_1_0, LIBVIRT_MODERN, SEED_V2
from tests.simulator.hv_helpers import (
    LIBVIRT_PROFILES,
    MODERN_WITHOUT_LOCKS,
    disk,
    disk_state,
    qcow2_chain,
    qcow2_file,
    raw_file,
)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path.resolve()


def clean(hv: Hypervisor, step: str) -> None:
    assert hv.violations() == [], f"after {step}"


# --------------------------------------------------------------------------- every operation


@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_every_operation_keeps_the_invariant(profile, tmp):
    """One domain through every operation the simulator has, checked after each step,
    including between qemu finishing a job and libvirt handling its event."""
    a = qcow2_chain(tmp, "a-base.qcow2", "a-mid.qcow2", "a-top.qcow2")
    b = qcow2_chain(tmp, "b-base.qcow2", "b-top.qcow2")
    media = qcow2_chain(tmp, "m-base.qcow2", "m-top.qcow2")
    cd = raw_file(tmp / "cd.iso")
    hv = Hypervisor(profile)
    modern = profile.cache.active_commit

    def step(name: str, outcome_ok: bool | None = True) -> None:
        if outcome_ok is not None:
            assert outcome_ok, name
        clean(hv, name)

    def job(name: str, target: str) -> None:
        assert hv.job_step("guest", target).ok
        clean(hv, f"{name}: qemu done")
        hv.deliver_all()
        clean(hv, f"{name}: event handled")

    vda = disk(a["a-top.qcow2"])
    hdc = disk(cd, "hdc", "raw", device="cdrom")
    step("define", hv.define("guest", [vda, hdc]).ok)
    step("start", hv.start("guest").ok)
    step("attach", hv.attach("guest", disk(b["b-top.qcow2"], "vdb")).ok)
    step("change media", hv.change_media("guest", "hdc", media["m-top.qcow2"], "qcow2").ok)
    step("eject", hv.change_media("guest", "hdc", None, None).ok)
    ov1 = str(tmp / "ov1.qcow2")
    step("snapshot", hv.snapshot("guest", "vda", ov1).ok)
    ovb = qcow2_file(tmp / "ovb.qcow2", "b-top.qcow2", "qcow2")
    step("reuse snapshot", hv.snapshot("guest", "vdb", ovb, reuse=True).ok)
    step("pull with base", hv.block_pull("guest", "vda", base=a["a-base.qcow2"]).ok)
    job("pull with base", "vda")
    ov2 = str(tmp / "ov2.qcow2")
    step("second snapshot", hv.snapshot("guest", "vda", ov2).ok)
    step("commit", hv.block_commit("guest", "vda", top=ov1, base=a["a-base.qcow2"]).ok)
    job("commit", "vda")
    active = hv.block_commit("guest", "vda", active=True)
    step("active commit", active.ok == modern)
    if active.ok:
        job("active commit", "vda")
        step("active commit pivot", hv.block_job_pivot("guest", "vda").ok)
    step("shallow copy", hv.block_copy("guest", "vdb", str(tmp / "c1.qcow2"), shallow=True).ok)
    job("shallow copy", "vdb")
    step("copy pivot", hv.block_job_pivot("guest", "vdb").ok)
    step("full copy", hv.block_copy("guest", "vdb", str(tmp / "c2.qcow2")).ok)
    job("full copy", "vdb")
    step("copy abort", hv.block_job_abort("guest", "vdb").ok)
    step("full pull", hv.block_pull("guest", "vdb").ok)
    assert hv.job_step("guest", "vdb").ok
    clean(hv, "full pull: qemu done")
    step("restart with an event pending", hv.daemon_restart().ok)
    step("restart", hv.daemon_restart().ok)
    step("detach", hv.detach("guest", "vdb").ok)
    step("destroy", hv.destroy("guest").ok)
    step("start again", hv.start("guest").ok)
    step("undefine running", hv.undefine("guest").ok)
    step("destroy transient", hv.destroy("guest").ok)
    assert hv.domains == {}


# --------------------------------------------------------------------------- faults


def fault_delete(hv: Hypervisor, path: str, tmp: Path) -> str:
    assert hv.delete_file(path).ok
    return "file-deleted"


def fault_replace(hv: Hypervisor, path: str, tmp: Path) -> str:
    assert hv.replace_file(path, qcow2.encode(qcow2.Qcow2Image(1 << 20, version=2))).ok
    return "file-replaced"


def fault_unreadable(hv: Hypervisor, path: str, tmp: Path) -> str:
    assert hv.make_unreadable(path).ok
    return "file-unreadable"


def fault_rewrite(hv: Hypervisor, path: str, tmp: Path) -> str:
    extra = qcow2_file(tmp / "extra.qcow2")
    assert hv.rewrite_header(path, extra, "qcow2").ok
    return "header-rewritten"


FAULTS: dict[str, Callable[[Hypervisor, str, Path], str]] = {
    "delete": fault_delete,
    "replace": fault_replace,
    "unreadable": fault_unreadable,
    "rewrite": fault_rewrite,
}


@pytest.mark.parametrize("where", ["top.qcow2", "mid.qcow2", "base.qcow2"])
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_fault_opens_a_documented_window(profile, fault, where, tmp):
    """A file of a cached chain changed behind libvirt's back: the disk is marked stale with
    the fault's reason, a disk whose chain does not name the file is not, and violations()
    stays empty."""
    paths = qcow2_chain(tmp, "base.qcow2", "mid.qcow2", "top.qcow2")
    other = qcow2_chain(tmp, "other.qcow2")["other.qcow2"]
    hv = Hypervisor(profile)
    assert hv.define("guest", [disk(paths["top.qcow2"]), disk(other, "vdb")]).ok
    assert hv.start("guest").ok
    reason = FAULTS[fault](hv, paths[where], tmp)
    assert disk_state(hv, "guest", "vda").stale_reason == reason
    assert disk_state(hv, "guest", "vdb").stale_reason is None
    clean(hv, fault)


def test_faults_need_their_file_except_replace_which_brings_it_back(tmp):
    paths = qcow2_chain(tmp, "base.qcow2")
    missing, raw = str(tmp / "missing.qcow2"), str(tmp / "raw.img")
    Path(raw).write_bytes(bytes(4096))
    hv = Hypervisor(LIBVIRT_MODERN)
    assert hv.rewrite_header(missing, paths["base.qcow2"], "qcow2").code == OpError.FILE_MISSING
    assert hv.rewrite_header(raw, None, None).code == OpError.UNSUPPORTED
    assert Path(raw).read_bytes() == bytes(4096)
    assert hv.delete_file(missing).code == OpError.FILE_MISSING
    assert hv.replace_file(missing, Path(raw).read_bytes()).ok
    assert Path(missing).read_bytes() == bytes(4096)


def test_violations_are_found_outside_a_window(tmp):
    """The invariant has teeth: a file changed without telling the hypervisor is reported."""
    for profile in (SEED_V2, LIBVIRT_1_0, LIBVIRT_MODERN):
        directory = tmp / profile.name
        directory.mkdir()
        paths = qcow2_chain(directory, "base.qcow2", "top.qcow2")
        hv = Hypervisor(profile)
        assert hv.define("guest", [disk(paths["top.qcow2"])]).ok
        assert hv.start("guest").ok
        os.unlink(paths["base.qcow2"])
        found = hv.violations()
        assert [(v.domain, v.target) for v in found] == [("guest", "vda")], profile.name


def pull_full(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
    if hv.block_pull("guest", "vda").ok:
        finish(hv)


def pull_base(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
    if hv.block_pull("guest", "vda", base=paths["base.qcow2"]).ok:
        finish(hv)


def commit(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
    if hv.block_commit("guest", "vda", top=paths["mid.qcow2"]).ok:
        finish(hv)


def active_commit(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
    if hv.block_commit("guest", "vda", base=paths["mid.qcow2"], active=True).ok:
        finish(hv)
        hv.block_job_pivot("guest", "vda")
        clean(hv, "pivot")


def copy(shallow: bool, reuse: bool) -> Callable[[Hypervisor, dict[str, str], Path], None]:
    def run_copy(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
        dest = str(tmp / "copy.qcow2")
        if reuse:
            qcow2_file(dest, paths["base.qcow2"], "qcow2")
        if hv.block_copy("guest", "vda", dest, shallow=shallow, reuse=reuse).ok:
            finish(hv)
            hv.block_job_pivot("guest", "vda")
            clean(hv, "pivot")

    return run_copy


def snapshot(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
    hv.snapshot("guest", "vda", str(tmp / "ov.qcow2"))
    clean(hv, "snapshot")
    pull_full(hv, paths, tmp)


def restart(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
    assert hv.daemon_restart().ok
    clean(hv, "restart")
    commit(hv, paths, tmp)


def stop_start(hv: Hypervisor, paths: dict[str, str], tmp: Path) -> None:
    assert hv.destroy("guest").ok
    hv.start("guest")
    clean(hv, "start")


def finish(hv: Hypervisor) -> None:
    clean(hv, "job started")
    assert hv.job_step("guest", "vda").ok
    clean(hv, "qemu done")
    hv.deliver_all()
    clean(hv, "event handled")


AFTER_FAULT: dict[str, Callable[[Hypervisor, dict[str, str], Path], None]] = {
    "pull": pull_full,
    "pull-base": pull_base,
    "commit": commit,
    "active-commit": active_commit,
    "copy-full": copy(shallow=False, reuse=False),
    "copy-shallow": copy(shallow=True, reuse=False),
    "copy-reuse": copy(shallow=True, reuse=True),
    "snapshot-pull": snapshot,
    "restart-commit": restart,
    "stop-start": stop_start,
}


@pytest.mark.parametrize("operation", list(AFTER_FAULT))
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_operations_after_a_fault_on_base(profile, fault, operation, tmp):
    """A fault on the base, then an operation: whatever the operation does (it may fail
    with a real error), no step leaves a cached chain that differs from the files without a
    documented reason."""
    paths = qcow2_chain(tmp, "base.qcow2", "mid.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    assert hv.define("guest", [disk(paths["top.qcow2"])]).ok
    assert hv.start("guest").ok
    FAULTS[fault](hv, paths["base.qcow2"], tmp)
    clean(hv, fault)
    AFTER_FAULT[operation](hv, paths, tmp)
    clean(hv, operation)


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("profile", LIBVIRT_PROFILES)
def test_fault_while_a_completion_event_is_pending(profile, fault, tmp):
    """A fault between qemu finishing a pull and libvirt handling the event: the fault's
    window outlives the event's."""
    paths = qcow2_chain(tmp, "base.qcow2", "mid.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    assert hv.define("guest", [disk(paths["top.qcow2"])]).ok
    assert hv.start("guest").ok
    assert hv.block_pull("guest", "vda", base=paths["base.qcow2"]).ok
    assert hv.job_step("guest", "vda").ok
    FAULTS[fault](hv, paths["base.qcow2"], tmp)
    clean(hv, fault)
    hv.deliver_all()
    clean(hv, "event handled")


@pytest.mark.parametrize("active", [False, True], ids=["intermediate", "active"])
def test_commit_delete_of_an_image_another_domain_uses_modern(active, tmp):
    """S19/S20 with VIR_DOMAIN_BLOCK_COMMIT_DELETE: the deleted image leaves the committing
    disk's chain; another domain whose chain names it is now behind the files, a window like
    any file deleted behind its back (S25), not a violation. (qemu's image locks would refuse
    the sharing; this is a host with locking off.)"""
    paths = qcow2_chain(tmp, "base.qcow2", "mid.qcow2", "top.qcow2")
    hv = Hypervisor(MODERN_WITHOUT_LOCKS)
    assert hv.define("guest", [disk(paths["top.qcow2"])]).ok
    assert hv.start("guest").ok
    shared = paths["top.qcow2"] if active else paths["mid.qcow2"]
    assert hv.create("other", [disk(shared, "hdc", "raw", device="cdrom")]).ok
    if active:
        assert hv.block_commit("guest", "vda", base=paths["mid.qcow2"], active=True, delete=True).ok
        finish(hv)
        assert hv.block_job_pivot("guest", "vda").ok
    else:
        assert hv.block_commit("guest", "vda", top=shared, delete=True).ok
        finish(hv)
    assert not os.path.exists(shared)
    assert disk_state(hv, "other", "hdc").stale_reason == "file-deleted"
    clean(hv, "commit --delete")


def test_media_change_refused_during_a_block_job_modern(tmp):
    """libvirt (qemuDomainChangeEjectableMedia): "can't change media while a block job is
    running on the device"; the job's completion then applies to the chain it started on."""
    paths = qcow2_chain(tmp, "base.qcow2", "mid.qcow2", "top.qcow2")
    other = qcow2_chain(tmp, "other.qcow2")["other.qcow2"]
    hv = Hypervisor(LIBVIRT_MODERN)
    cdrom = disk(paths["top.qcow2"], "hdc", "qcow2", device="cdrom")
    assert hv.define("guest", [cdrom]).ok
    assert hv.start("guest").ok
    assert hv.block_pull("guest", "hdc", base=paths["base.qcow2"]).ok
    assert hv.job_step("guest", "hdc").ok
    refused = hv.change_media("guest", "hdc", other, "qcow2")
    assert refused.code == OpError.JOB_ACTIVE
    assert refused.message == "can't change media while a block job is running on the device"
    hv.deliver_all()
    assert disk_state(hv, "guest", "hdc").config.path == paths["top.qcow2"]
    clean(hv, "event handled")
