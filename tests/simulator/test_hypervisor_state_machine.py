"""Hypothesis stateful test of the simulated hypervisor alone, once per cache profile.

A ``RuleBasedStateMachine`` drives one ``Hypervisor`` through random sequences of
domain lifecycle operations, hotplug, media changes, external snapshots, block
jobs (pull, commit, copy; stepped, their events delivered one at a time or all in
a permuted order), daemon restarts and faults on the image files between
operations. Images are real qcow2 and raw files in a temporary directory per
example, written with the qcow2 encoder.

After every step the machine checks the rules of libvirt-rules.md §1-§5 that hold
whatever the sequence:

- ``hv.violations()`` is empty: a cached chain equals a fresh probe unless the
  disk carries a documented ``stale_reason`` window;
- no operation raises: every refusal is an ``Outcome`` with rc -1 and a code;
  rc is 0 or -1, and rc 0 with an error only for seed-v2's failed forced
  re-probe (PATCHv2 12/16, §1.2 point 3); a failed probe is never cached (S1),
  and a failed check of a chain already cached leaves it as it was (R2);
- no job or pending event survives a stop; every job belongs to a running disk;
- a running domain's disks' active layers are open for writing in qemu;
- libvirt-modern: backing indexes are unique within a chain and a new overlay's
  index is higher than any seen before in that domain (-blockdev's counter, §5
  S23);
- nothing the domain was granted outlives its stop, except the documented 2012
  leaks: unplug revoked only the top (BZ 876828, §1.4), and the stop walk visited
  only the cached chain, so images that left the cache while the domain ran
  (dropped by a snapshot or a restart, re-probed away after a job, §1.2, §2.3,
  S15) were never revoked.

Bugs the machine found are kept below as small tests: ``xfail(strict=True)`` while
open, plain regression tests once fixed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from simulator.blockjobs import JobState
from simulator.formats import qcow2
from simulator.hypervisor import DiskConfig, Hypervisor, LiveDisk, OpError, Outcome
from simulator.model import Chain, LayerType
from simulator.profiles import PROFILES, IndexRule, Profile, SnapshotRule
from tests.simulator.hv_helpers import MODERN_WITHOUT_LOCKS

MIB = 1024 * 1024
RAW_SIZE = 64 * 1024
PERSISTENT_NAMES = ("dom0", "dom1")
TRANSIENT_NAMES = ("tr0",)
HOTPLUG_TARGETS = ("vdb", "vdc")
CDROM = "hdc"
PROFILE_NAMES = ("seed-v2", "libvirt-1.0", "libvirt-modern")

_CI_ONLY: dict[str, Any] = {"database": None} if os.environ.get("CI") else {}
MACHINE_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    **_CI_ONLY,
)


def qcow2_bytes(backing: str | None = None, fmt: str | None = None, version: int = 3) -> bytes:
    name = backing.encode() if backing is not None else None
    return qcow2.encode(qcow2.Qcow2Image(MIB, name, fmt if name else None, version))


def _walk(disk: LiveDisk) -> list[str]:
    """The files libvirt's stop/unplug walk visits for a disk: the top, then the cache."""
    if not disk.config.path or disk.config.type not in ("file", "block"):
        return []
    paths = [disk.config.path]
    if disk.chain is not None:
        paths += [
            layer.filename
            for layer in disk.chain.layers[1:]
            if layer.type in (LayerType.FILE, LayerType.BLOCK)
        ]
    return paths


class HypervisorMachine(RuleBasedStateMachine):
    """One simulated hypervisor under one profile, with its image files in a temp dir."""

    profile: ClassVar[Profile]

    images = Bundle("images")
    domains = Bundle("domains")

    def __init__(self) -> None:
        super().__init__()
        self.dir = os.path.realpath(tempfile.mkdtemp(prefix="chainsuite-sm-"))
        self.hv = Hypervisor(self.profile)
        self.formats: dict[str, str] = {}
        """Each image's true format, by base name."""
        self.serial = 0
        self.allowed_leaks: dict[str, set[str]] = {}
        """Per domain: files the profile's documented leaks let outlive a stop."""
        self.walks: dict[tuple[str, str], list[str]] = {}
        """The stop walk of every running disk after the previous step."""
        self.max_index: dict[str, int] = {}
        """Per running domain: the highest backing index seen since it started."""

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------

    @property
    def cache(self) -> Any:
        return self.profile.cache

    @property
    def modern(self) -> bool:
        return self.cache.index is IndexRule.DOMAIN_COUNTER

    @property
    def cache_may_forget(self) -> bool:
        """2012: the cache is dropped or replaced while running; the stop walk sees only it."""
        return self.cache.snapshot is SnapshotRule.DROP_CACHE

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def short(self, text: object) -> str:
        return str(text).replace(self.dir + "/", "")

    def fresh_name(self, stem: str, ext: str = "qcow2") -> str:
        self.serial += 1
        return f"{stem}{self.serial}.{ext}"

    def write(self, name: str, data: bytes, fmt: str) -> None:
        with open(self.path(name), "wb") as image:
            image.write(data)
        self.formats[name] = fmt

    def op(
        self,
        label: str,
        call: Callable[..., Outcome],
        *args: Any,
        forced_reprobe: bool = False,
        **kwargs: Any,
    ) -> Outcome:
        """Runs one operation: it must not raise and must answer with a well-formed Outcome.

        rc is 0 or -1; -1 carries a code and a message; 0 carries no error, except for
        seed-v2's failed forced re-probe, which returned 0 (PATCHv2 12/16's ``&& !force``).
        """
        note(self.short(label))
        try:
            outcome = call(*args, **kwargs)
        except Exception as error:
            raise AssertionError(f"{self.short(label)} raised {error!r}") from error
        assert isinstance(outcome, Outcome), outcome
        assert outcome.rc in (0, -1), outcome
        if outcome.rc == -1:
            assert outcome.code, f"a refusal without a code: {outcome}"
            assert outcome.message, f"a refusal without a message: {outcome}"
        elif outcome.code is not None:
            assert forced_reprobe and self.cache.forced_failure_rc == 0, (
                f"rc 0 with an error outside seed-v2's failed forced re-probe: {outcome}"
            )
        note(f"    -> {self.short(outcome)}")
        event(f"{getattr(call, '__name__', label)}: {outcome.code or 'ok'}")
        return outcome

    def running(self) -> list[str]:
        return sorted(name for name, dom in self.hv.domains.items() if dom.running)

    def live_disks(self, name: str) -> list[LiveDisk]:
        domain = self.hv.domains.get(name)
        return list(domain.live or ()) if domain else []

    def draw_disk(self, data: st.DataObject, name: str) -> str:
        targets = [disk.config.target for disk in self.live_disks(name)]
        return data.draw(st.sampled_from(targets or ["vda"]), label="target")

    def disk_of(self, name: str, target: str) -> LiveDisk | None:
        domain = self.hv.domains.get(name)
        return domain.live_disk(target) if domain else None

    def layer_names(self, target: str, chain: Chain | None, *, top: bool) -> list[str]:
        """Ways a user names layers: path, relative name, ``vda[N]``; and one bogus name."""
        names = ["bogus.img"]
        for position, layer in enumerate(chain.layers if chain else ()):
            if position == 0 and not top:
                continue
            names.append(layer.filename)
            names.append(f"{target}[{layer.index}]")
            if layer.relative_path:
                names.append(layer.relative_path)
        return names

    def disk_config(
        self, data: st.DataObject, target: str, image: str, device: str = "disk"
    ) -> DiskConfig:
        true_format = self.formats.get(image, "raw")
        choice = data.draw(
            st.sampled_from(["true", "true", "unspecified", "other"]), label=f"{target} format"
        )
        fmt: str | None = true_format
        if choice == "unspecified":
            fmt = None
        elif choice == "other":
            fmt = "raw" if true_format == "qcow2" else "qcow2"
        return DiskConfig(target, self.path(image), fmt, device=device)

    def domain_disks(
        self, data: st.DataObject, vda: str, vdb: str | None, cdrom: str | None
    ) -> list[DiskConfig]:
        disks = [self.disk_config(data, "vda", vda)]
        if vdb is not None:
            disks.append(self.disk_config(data, "vdb", vdb))
        if cdrom is not None:
            path = None if cdrom == "" else self.path(cdrom)
            disks.append(DiskConfig(CDROM, path, "raw" if path else None, device="cdrom"))
        return disks

    def started(self, name: str) -> None:
        self.allowed_leaks[name] = set()
        self.max_index[name] = 0

    def check_nothing_outlives(self, name: str) -> None:
        left = set(self.hv.granted.get(name, ()))
        leaked = left - self.allowed_leaks.get(name, set())
        assert not leaked, (
            f"{name} stopped but keeps access to {sorted(self.short(p) for p in leaked)}"
        )

    def overlay_bytes(self, backing: str | None = None, fmt: str | None = None) -> bytes:
        """A qcow2 image as the era's qemu-img writes it (v2 in 2012, v3 since)."""
        return qcow2_bytes(backing, fmt, self.cache.overlay_qcow2_version)

    # -- images -------------------------------------------------------------------------

    def make_chain(self, stem: str, relative: bool, recorded: bool) -> list[str]:
        """base.raw <- mid.qcow2 <- top.qcow2 as the era's qemu-img writes them (-F if recorded)."""
        base, mid, top = (
            self.fresh_name(f"{stem}base", "raw"),
            self.fresh_name(f"{stem}mid"),
            self.fresh_name(f"{stem}top"),
        )
        self.write(base, bytes(RAW_SIZE), "raw")
        for name, below in ((mid, base), (top, mid)):
            backing = below if relative else self.path(below)
            fmt = self.formats[below] if recorded else None
            self.write(name, self.overlay_bytes(backing, fmt), "qcow2")
        note(f"{top} <- {mid} <- {base} (relative={relative}, recorded={recorded})")
        return [base, mid, top]

    @initialize(target=images, relative=st.booleans())
    def initial_images(self, relative: bool) -> Any:
        return multiple(*self.make_chain("", relative, recorded=True))

    @initialize(
        target=domains,
        relative=st.booleans(),
        recorded=st.sampled_from([True, True, True, False]),
        cdrom=st.booleans(),
        run=st.sampled_from([True, True, True, False]),
    )
    def initial_domain(self, relative: bool, recorded: bool, cdrom: bool, run: bool) -> str:
        """dom0 on its own three-layer chain, usually running: jobs have work from step 1."""
        base, _, top = self.make_chain("vm", relative, recorded)
        disks = [DiskConfig("vda", self.path(top), "qcow2")]
        if cdrom:
            disks.append(DiskConfig(CDROM, self.path(base), "raw", device="cdrom"))
        assert self.op(f"define('dom0', {disks})", self.hv.define, "dom0", disks).ok
        if run and self.op("start('dom0')", self.hv.start, "dom0").ok:
            self.started("dom0")  # refused under libvirt-modern when -F is missing (S7)
        return "dom0"

    @rule(
        target=images,
        kind=st.sampled_from(["raw", "qcow2", "qcow2"]),
        backing=st.none() | images,
        relative=st.booleans(),
        recorded=st.sampled_from([True, True, False]),
        version=st.sampled_from([2, 3]),
    )
    def new_image(
        self, kind: str, backing: str | None, relative: bool, recorded: bool, version: int
    ) -> str:
        if kind == "raw":
            name = self.fresh_name("img", "raw")
            self.write(name, bytes(RAW_SIZE), "raw")
            return name
        name = self.fresh_name("img")
        backing_name = None
        if backing is not None:
            backing_name = backing if relative else self.path(backing)
        fmt = self.formats.get(backing, "raw") if backing and recorded else None
        self.write(name, qcow2_bytes(backing_name, fmt, version), "qcow2")
        note(f"{name}: qcow2 v{version} <- {backing_name and self.short(backing_name)} ({fmt})")
        return name

    # -- lifecycle ----------------------------------------------------------------------

    @rule(
        target=domains,
        name=st.sampled_from(PERSISTENT_NAMES),
        vda=images,
        vdb=st.none() | images,
        cdrom=st.none() | st.just("") | images,
        data=st.data(),
    )
    def define(
        self, name: str, vda: str, vdb: str | None, cdrom: str | None, data: st.DataObject
    ) -> Any:
        disks = self.domain_disks(data, vda, vdb, cdrom)
        outcome = self.op(f"define({name!r}, {disks})", self.hv.define, name, disks)
        return name if outcome.ok else multiple()

    @rule(
        target=domains,
        name=st.sampled_from(TRANSIENT_NAMES),
        vda=images,
        cdrom=st.none() | st.just("") | images,
        data=st.data(),
    )
    def create(self, name: str, vda: str, cdrom: str | None, data: st.DataObject) -> Any:
        disks = self.domain_disks(data, vda, None, cdrom)
        outcome = self.op(f"create({name!r}, {disks})", self.hv.create, name, disks)
        if outcome.ok:
            self.started(name)
            return name
        assert name not in self.hv.domains or self.hv.domains[name].running
        return multiple()

    @rule(name=domains)
    def undefine(self, name: str) -> None:
        was_running = name in self.running()
        self.op(f"undefine({name!r})", self.hv.undefine, name)
        if not was_running:
            assert name not in self.hv.domains
            self.check_nothing_outlives(name)

    @rule(name=domains)
    def start(self, name: str) -> None:
        was_running = name in self.running()
        outcome = self.op(f"start({name!r})", self.hv.start, name)
        if outcome.ok:
            assert not was_running
            self.started(name)
        elif name in self.hv.domains and not was_running:
            assert not self.hv.domains[name].running, "a failed start left the domain running"

    @rule(name=domains)
    def destroy(self, name: str) -> None:
        outcome = self.op(f"destroy({name!r})", self.hv.destroy, name)
        if not outcome.ok:
            return
        assert not any(job.domain == name for job in self.hv.jobs.values()), "a job survived"
        assert not any(event.domain == name for event in self.hv.events.pending)
        self.check_nothing_outlives(name)

    @precondition(lambda self: bool(self.hv.domains))
    @rule()
    def daemon_restart(self) -> None:
        self.op("daemon_restart()", self.hv.daemon_restart)
        if not self.cache.survives_restart:
            for name in self.running():
                for disk in self.live_disks(name):
                    assert disk.chain is None, "the 2012 cache survived a daemon restart"

    # -- hotplug and media --------------------------------------------------------------

    @precondition(lambda self: bool(self.running()))
    @rule(image=images, slot=st.sampled_from(HOTPLUG_TARGETS), data=st.data())
    def attach(self, image: str, slot: str, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.running()), label="domain")
        config = self.disk_config(data, slot, image)
        self.op(f"attach({name!r}, {config})", self.hv.attach, name, config)

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.running()), label="domain")
        target = self.draw_disk(data, name)
        disk = self.disk_of(name, target)
        walk = _walk(disk) if disk else []
        outcome = self.op(f"detach({name!r}, {target!r})", self.hv.detach, name, target)
        if outcome.ok and not self.cache.detach_revokes_cached_chain:
            # BZ 876828 (libvirt-rules.md §1.4): 1.0.0 revoked only the top on unplug.
            self.allowed_leaks.setdefault(name, set()).update(walk[1:])

    @precondition(lambda self: bool(self.running()))
    @rule(image=st.none() | images, data=st.data())
    def change_media(self, image: str | None, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.running()), label="domain")
        target = data.draw(st.sampled_from([CDROM, "vda"]), label="target")
        path = self.path(image) if image else None
        fmt = data.draw(st.sampled_from(["raw", "qcow2", None]), label="format") if path else None
        self.op(
            f"change_media({name!r}, {target!r}, {path!r}, {fmt!r})",
            self.hv.change_media,
            name,
            target,
            path,
            fmt,
        )

    # -- snapshots ----------------------------------------------------------------------

    def _snapshot(self, name: str, target: str, overlay: str, reuse: bool) -> Outcome:
        before = self.max_index.get(name, 0)
        outcome = self.op(
            f"snapshot({name!r}, {target!r}, {self.path(overlay)!r}, reuse={reuse})",
            self.hv.snapshot,
            name,
            target,
            self.path(overlay),
            reuse=reuse,
        )
        if outcome.ok:
            if not reuse:
                self.formats[overlay] = "qcow2"
            disk = self.disk_of(name, target)
            assert disk is not None and disk.config.path == self.path(overlay)
            if self.modern:
                assert disk.chain is not None
                index = disk.chain.layers[0].index
                assert index > before, (
                    f"new overlay {overlay} got index {index}, not above {before} "
                    f"already used in {name}"
                )
        return outcome

    @precondition(lambda self: bool(self.running()))
    @rule(target=images, data=st.data())
    def snapshot(self, data: st.DataObject) -> Any:
        name = data.draw(st.sampled_from(self.running()), label="domain")
        target = self.draw_disk(data, name)
        overlay = self.fresh_name("snap")
        outcome = self._snapshot(name, target, overlay, reuse=False)
        return overlay if outcome.ok else multiple()

    @precondition(lambda self: bool(self.running()))
    @rule(target=images, relative=st.booleans(), data=st.data())
    def snapshot_reuse(self, relative: bool, data: st.DataObject) -> Any:
        """REUSE_EXT into an overlay the user pre-created on the disk's active layer."""
        name = data.draw(st.sampled_from(self.running()), label="domain")
        target = self.draw_disk(data, name)
        disk = self.disk_of(name, target)
        overlay = self.fresh_name("reuse")
        if disk is not None and disk.config.path:
            backing = disk.config.path
            if relative:
                backing = os.path.basename(backing)
            self.write(overlay, self.overlay_bytes(backing, disk.config.format or "raw"), "qcow2")
        outcome = self._snapshot(name, target, overlay, reuse=True)
        return overlay if outcome.ok else multiple()

    @precondition(lambda self: bool(self.running()))
    @rule(existing=images, data=st.data())
    def snapshot_reuse_existing(self, existing: str, data: st.DataObject) -> None:
        """REUSE_EXT into any existing file, whatever it records below itself (S16)."""
        name = data.draw(st.sampled_from(self.running()), label="domain")
        target = self.draw_disk(data, name)
        self._snapshot(name, target, existing, reuse=True)

    # -- block jobs ---------------------------------------------------------------------

    def known_chain(self, name: str, target: str) -> Chain | None:
        """The chain a user would name layers from: libvirt's cache, else a fresh probe."""
        chain = self.hv.chain(name, target)
        disk = self.disk_of(name, target)
        if chain is None and disk is not None and disk.config.path:
            fresh = self.hv.fresh_chain(disk.config)
            chain = fresh if isinstance(fresh, Chain) else None
        return chain

    def idle_disks(self) -> list[tuple[str, str]]:
        """Running disks with a source and no block job: where a new job can start."""
        return [
            (name, disk.config.target)
            for name in self.running()
            for disk in self.live_disks(name)
            if disk.job is None
        ]

    def draw_idle_disk(self, data: st.DataObject) -> tuple[str, str]:
        return data.draw(st.sampled_from(self.idle_disks()), label="disk")

    def progress(self, data: st.DataObject, name: str, target: str) -> None:
        """After a job starts: qemu may finish it at once, libvirt may see it, and pivot."""
        how = data.draw(
            st.sampled_from(["none", "step", "step+deliver", "step+deliver+pivot"]),
            label="then",
        )
        if how == "none":
            return
        if not self.step_job(name, target):
            return
        if how.startswith("step+deliver") and self.hv.events.pending:
            self.deliver_events(data)
        if how.endswith("pivot"):
            disk = self.disk_of(name, target)
            if disk is not None and disk.job is not None:
                self.pivot(name, target)

    @precondition(lambda self: bool(self.idle_disks()))
    @rule(data=st.data())
    def block_pull(self, data: st.DataObject) -> None:
        name, target = self.draw_idle_disk(data)
        chain = self.known_chain(name, target)
        bases: list[str | None] = [None, *self.layer_names(target, chain, top=False)]
        base = data.draw(st.sampled_from(bases), label="base")
        outcome = self.op(
            f"block_pull({name!r}, {target!r}, base={base!r})",
            self.hv.block_pull,
            name,
            target,
            base,
        )
        if outcome.ok:
            self.progress(data, name, target)

    def name_layer(self, data: st.DataObject, target: str, chain: Chain, position: int) -> str:
        """A layer as a user names it: its path, ``vda[N]``, or the relative name it has."""
        layer = chain.layers[position]
        styles = [layer.filename, f"{target}[{layer.index}]"]
        if layer.relative_path:
            styles.append(layer.relative_path)
        return data.draw(st.sampled_from(styles), label=f"name of layer {position}")

    @precondition(lambda self: bool(self.idle_disks()))
    @rule(
        kind=st.sampled_from(["intermediate", "active", "shallow", "any"]),
        delete=st.booleans(),
        data=st.data(),
    )
    def block_commit(self, kind: str, delete: bool, data: st.DataObject) -> None:
        """Intermediate, active (pivot later), shallow, with --delete; or any names at all."""
        name, target = self.draw_idle_disk(data)
        chain = self.known_chain(name, target)
        depth = len(chain) if chain else 0
        top: str | None = None
        base: str | None = None
        active = kind == "active"
        shallow = kind == "shallow"
        if kind == "any" or chain is None or depth < 2:
            names = self.layer_names(target, chain, top=True)
            top = data.draw(st.sampled_from([None, *names]), label="top")
            base = data.draw(st.sampled_from([None, *names]), label="base")
            active, shallow = (
                data.draw(st.booleans(), label="active"),
                data.draw(st.booleans(), label="shallow"),
            )
        else:
            first = 0 if active else data.draw(st.integers(0, depth - 2), label="top at")
            if first == 0:
                active = True
                top = data.draw(st.none() | st.just(chain.layers[0].filename), label="top")
            else:
                top = self.name_layer(data, target, chain, first)
            below = first + 1 if shallow else data.draw(st.integers(first + 1, depth - 1))
            if shallow or data.draw(st.booleans(), label="name the base"):
                base = self.name_layer(data, target, chain, below)
        outcome = self.op(
            f"block_commit({name!r}, {target!r}, top={top!r}, base={base!r}, "
            f"active={active}, shallow={shallow}, delete={delete})",
            self.hv.block_commit,
            name,
            target,
            top,
            base,
            active=active,
            shallow=shallow,
            delete=delete,
        )
        if outcome.ok:
            self.progress(data, name, target)

    @precondition(lambda self: bool(self.idle_disks()))
    @rule(target=images, shallow=st.booleans(), reuse=st.booleans(), data=st.data())
    def block_copy(self, shallow: bool, reuse: bool, data: st.DataObject) -> Any:
        name, target = self.draw_idle_disk(data)
        destination = self.fresh_name("copy")
        before = self.max_index.get(name, 0)
        if reuse:
            # The user pre-creates the destination: on the same backing for a shallow copy.
            chain = self.known_chain(name, target)
            below = chain.layers[1] if shallow and chain and len(chain) > 1 else None
            backing = below.filename if below else None
            fmt = below.format if below else None
            self.write(destination, self.overlay_bytes(backing, fmt), "qcow2")
        outcome = self.op(
            f"block_copy({name!r}, {target!r}, {self.path(destination)!r}, "
            f"shallow={shallow}, reuse={reuse})",
            self.hv.block_copy,
            name,
            target,
            self.path(destination),
            shallow=shallow,
            reuse=reuse,
        )
        if outcome.ok:
            self.formats[destination] = "qcow2"
            if self.modern:
                disk = self.disk_of(name, target)
                assert disk is not None and disk.job is not None
                mirror_index = self.hv.jobs[disk.job].mirror_index
                assert mirror_index > before, "the copy's destination reused an index"
            self.progress(data, name, target)
        if outcome.ok or reuse:
            return destination
        return multiple()

    def _job_disks(self) -> list[tuple[str, str]]:
        return sorted(
            (name, disk.config.target)
            for name in self.running()
            for disk in self.live_disks(name)
            if disk.job is not None
        )

    def draw_job_disk(self, data: st.DataObject, *, ready: bool = False) -> tuple[str, str]:
        with_jobs = self._job_disks()
        if ready:
            # pivot: mostly a job libvirt has seen READY for, sometimes any other.
            pivotable = [
                (name, target)
                for name, target in with_jobs
                if (disk := self.disk_of(name, target)) is not None
                and disk.job is not None
                and self.hv.jobs[disk.job].pivot
            ]
            with_jobs = pivotable or with_jobs
        if with_jobs and data.draw(st.sampled_from([True, True, True, False]), label="job disk?"):
            return data.draw(st.sampled_from(with_jobs), label="job disk")
        name = data.draw(st.sampled_from(self.running()), label="domain")
        return name, self.draw_disk(data, name)

    def step_job(self, name: str, target: str) -> bool:
        return self.op(f"job_step({name!r}, {target!r})", self.hv.job_step, name, target).ok

    @precondition(lambda self: bool(self.hv.jobs))
    @rule(data=st.data())
    def job_step(self, data: st.DataObject) -> None:
        self.step_job(*self.draw_job_disk(data))

    def pivot(self, name: str, target: str) -> None:
        disk = self.disk_of(name, target)
        job = self.hv.jobs.get(disk.job) if disk and disk.job is not None else None
        outcome = self.op(
            f"block_job_pivot({name!r}, {target!r})", self.hv.block_job_pivot, name, target
        )
        if outcome.ok:
            assert job is not None and disk is not None
            assert disk.job is None and job.id not in self.hv.jobs
            if job.kind == "copy" and self.modern:
                # libvirt 9.0 numbers the destination when the copy starts.
                assert disk.chain is not None
                assert disk.chain.layers[0].index == job.mirror_index

    @precondition(lambda self: bool(self.hv.jobs))
    @rule(data=st.data())
    def block_job_pivot(self, data: st.DataObject) -> None:
        self.pivot(*self.draw_job_disk(data, ready=True))

    @precondition(lambda self: bool(self.hv.jobs))
    @rule(data=st.data())
    def block_job_abort(self, data: st.DataObject) -> None:
        name, target = self.draw_job_disk(data)
        disk = self.disk_of(name, target)
        chain = disk.chain if disk else None
        outcome = self.op(
            f"block_job_abort({name!r}, {target!r})", self.hv.block_job_abort, name, target
        )
        if outcome.ok:
            assert disk is not None and disk.job is None
            assert disk.chain == chain, "an abort changed the chain (S21)"

    @precondition(lambda self: bool(self.hv.events.pending))
    @rule(data=st.data())
    def deliver_one(self, data: st.DataObject) -> None:
        pending = self.hv.events.pending
        chosen = data.draw(st.sampled_from(pending), label="event")
        self.op(f"deliver({chosen})", self.hv.deliver, chosen.id)
        assert chosen not in self.hv.events.pending

    def deliver_events(self, data: st.DataObject) -> None:
        count = len(self.hv.events.pending)
        order = data.draw(st.permutations(range(count)), label="order")
        note(f"deliver_all(order={order}) of {self.hv.events.pending}")
        try:
            delivered = self.hv.deliver_all(lambda pending: [pending[i] for i in order])
        except Exception as error:
            raise AssertionError(f"deliver_all raised {error!r}") from error
        assert delivered == count
        event(f"deliver_all: {min(count, 3)}")
        assert not self.hv.events.pending

    @precondition(lambda self: bool(self.hv.events.pending))
    @rule(data=st.data())
    def deliver_all(self, data: st.DataObject) -> None:
        self.deliver_events(data)

    @precondition(lambda self: bool(self.running()))
    @rule(force=st.booleans(), data=st.data())
    def redetect(self, force: bool, data: st.DataObject) -> None:
        """qemuDomainDetermineDiskChain called directly: S1's 'equivalent forced re-detect'."""
        if force and self.modern:
            force = False  # libvirt >= 5.6 has no forced mode (R2)
        name = data.draw(st.sampled_from(self.running()), label="domain")
        disks = self.live_disks(name)
        if not disks:
            return
        disk = data.draw(st.sampled_from(disks), label="disk")
        domain = self.hv.domains[name]
        before = disk.chain
        outcome = self.op(
            f"determine_disk_chain({name!r}, {disk.config.target!r}, force={force})",
            self.hv.determine_disk_chain,
            domain,
            disk,
            force,
            forced_reprobe=force,
        )
        if outcome.code is not None:
            if force or before is None:
                assert disk.chain is None, "a failed probe was cached as success (S1)"
            else:  # R2: a chain already there is only checked, and kept, on failure
                assert disk.chain == before, "a failed check changed the cached chain"

    # -- faults -------------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["delete", "replace-raw", "replace-qcow2", "unreadable", "rewrite"]),
        data=st.data(),
    )
    def fault(self, kind: str, data: st.DataObject) -> None:
        """A file changes behind libvirt's back between two operations."""
        files = sorted(os.listdir(self.dir))
        if not files:
            return
        image = data.draw(st.sampled_from(files), label="file")
        path = self.path(image)
        other = data.draw(st.none() | st.sampled_from(files), label="new backing")
        recorded = data.draw(st.booleans(), label="backing format recorded")
        fmt = self.formats.get(other, "raw") if other and recorded else None
        if kind == "delete":
            self.op(f"delete_file({image!r})", self.hv.delete_file, path)
            self.formats.pop(image, None)
        elif kind.startswith("replace"):
            raw = kind == "replace-raw"
            content = (
                bytes(RAW_SIZE) if raw else self.overlay_bytes(other and self.path(other), fmt)
            )
            self.op(
                f"replace_file({image!r}, {'raw' if raw else f'qcow2 <- {other!r} ({fmt})'})",
                self.hv.replace_file,
                path,
                content,
            )
            self.formats[image] = "raw" if raw else "qcow2"
        elif kind == "unreadable":
            self.op(f"make_unreadable({image!r})", self.hv.make_unreadable, path)
        else:
            self.op(
                f"rewrite_header({image!r}, {other!r}, {fmt!r})",
                self.hv.rewrite_header,
                path,
                other and self.path(other),
                fmt,
            )

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def cache_matches_files(self) -> None:
        found = self.hv.violations()
        assert not found, "cached chains differ from the files:\n" + "\n".join(
            self.short(violation) for violation in found
        )

    @invariant()
    def jobs_belong_to_running_disks(self) -> None:
        for job in self.hv.jobs.values():
            disk = self.disk_of(job.domain, job.target)
            assert disk is not None, f"job {job.id} outlives its disk or domain"
            assert disk.job == job.id, f"job {job.id} is not its disk's job"
            if job.state in (JobState.COMPLETED, JobState.FAILED):
                # qemu is done with it; libvirt has yet to handle the event
                assert any(e.job == job.id for e in self.hv.events.pending), (
                    f"job {job.id} {job.state} with no event pending: it never ends"
                )
            else:
                assert job.state in (JobState.RUNNING, JobState.READY), f"job {job.id} {job.state}"
        for pending in self.hv.events.pending:
            assert pending.domain in self.running(), f"event {pending} of a stopped domain"
        for name in self.running():
            for disk in self.live_disks(name):
                if disk.job is not None:
                    assert disk.job in self.hv.jobs, f"{name}/{disk.config.target}: lost job"

    @invariant()
    def active_layers_open_for_writing(self) -> None:
        writing = self.hv.open_for_writing()
        for name in self.running():
            for disk in self.live_disks(name):
                if disk.config.path and disk.config.type in ("file", "block"):
                    assert disk.config.path in writing, (
                        f"{name}/{disk.config.target}: active layer not open in qemu"
                    )

    @invariant()
    def backing_indexes(self) -> None:
        if not self.modern:
            return
        for name in self.running():
            highest = self.max_index.get(name, 0)
            for disk in self.live_disks(name):
                highest = max(highest, disk.top_index)
                if disk.chain is None:
                    continue
                indexes = [layer.index for layer in disk.chain.layers]
                assert len(set(indexes)) == len(indexes), (
                    f"{name}/{disk.config.target}: duplicate backing indexes {indexes}"
                )
                highest = max(highest, *indexes)
            self.max_index[name] = highest

    @invariant()
    def track_documented_leaks(self) -> None:
        """2012: files that leave the cache while running are not revoked at stop."""
        walks = {
            (name, disk.config.target): _walk(disk)
            for name in self.running()
            for disk in self.live_disks(name)
        }
        if self.cache_may_forget:
            for (name, target), before in self.walks.items():
                after = set(walks.get((name, target), ()))
                if (name, target) in walks:
                    self.allowed_leaks.setdefault(name, set()).update(set(before) - after)
        self.walks = walks


def machine_for(profile_name: str) -> type[HypervisorMachine]:
    """The machine under one profile (its own class, so each gets its own TestCase)."""
    suffix = profile_name.replace("-", "_").replace(".", "_")
    return type(
        f"HypervisorMachine_{suffix}",
        (HypervisorMachine,),
        {"profile": PROFILES[profile_name], "__module__": __name__},
    )


SeedV2Machine = machine_for("seed-v2")
Libvirt10Machine = machine_for("libvirt-1.0")
LibvirtModernMachine = machine_for("libvirt-modern")

TestSeedV2 = SeedV2Machine.TestCase
TestSeedV2.settings = MACHINE_SETTINGS
TestLibvirt10 = Libvirt10Machine.TestCase
TestLibvirt10.settings = MACHINE_SETTINGS
TestLibvirtModern = LibvirtModernMachine.TestCase
TestLibvirtModern.settings = MACHINE_SETTINGS


# --------------------------------------------------------------------------- bugs found
#
# Each test is the shrunk counterexample of one failure of the machine above, replayed
# by hand. An open bug is xfail(strict=True), and the machine steps around it with a
# guard (a method named after the test) so that it can look for others; once the
# simulator is fixed the strict xfail fails, and the xfail and the guard come out.
# Fixed bugs stay as regression tests.


def _hv(profile_name: str) -> Hypervisor:
    return Hypervisor(PROFILES[profile_name])


def _raw(directory: str, name: str = "base.raw") -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as image:
        image.write(bytes(RAW_SIZE))
    return path


def _empty_cdrom_domain(hv: Hypervisor, directory: str) -> None:
    disks = [
        DiskConfig("vda", _raw(directory), "raw"),
        DiskConfig(CDROM, None, None, device="cdrom"),
    ]
    assert hv.create("tr0", disks).ok


class SimulatorCrash(Exception):
    """The simulator raised where it must answer with an Outcome."""


def _refused(call: Callable[[], Outcome]) -> Outcome:
    """The call must answer (not raise) with a refusal that has a code."""
    try:
        outcome = call()
    except Exception as error:
        raise SimulatorCrash(repr(error)) from error
    assert outcome.rc == -1 and outcome.code, outcome
    return outcome


@pytest.fixture
def workdir():
    path = os.path.realpath(tempfile.mkdtemp(prefix="chainsuite-sm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
@pytest.mark.parametrize("job", ["pull", "commit", "copy"])
def test_block_job_on_empty_cdrom_is_refused(workdir, profile_name, job):
    """Found by the machine, fixed in add8612: a block job on an empty cdrom tripped an assert
    in _chain_for_job (determine_disk_chain returns 0 for an empty source, with no chain)."""
    hv = _hv(profile_name)
    _empty_cdrom_domain(hv, workdir)
    calls = {
        "pull": lambda: hv.block_pull("tr0", CDROM),
        "commit": lambda: hv.block_commit("tr0", CDROM, active=True),
        "copy": lambda: hv.block_copy("tr0", CDROM, os.path.join(workdir, "copy.qcow2")),
    }
    _refused(calls[job])


def test_snapshot_of_empty_cdrom_is_refused_modern(workdir):
    """Found by the machine, fixed in add8612: a modelled snapshot of an empty cdrom asserted
    a chain that determine_disk_chain never made (empty sources have none)."""
    hv = _hv("libvirt-modern")
    _empty_cdrom_domain(hv, workdir)
    _refused(lambda: hv.snapshot("tr0", CDROM, os.path.join(workdir, "snap.qcow2")))


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_pull_of_a_raw_disk_steps_without_raising(workdir, profile_name):
    """Found by the machine (job_step raised HeaderRejected); fixed in bc460f2."""
    hv = _hv(profile_name)
    assert hv.create("tr0", [DiskConfig("vda", _raw(workdir), "raw")]).ok
    # Nothing lies below the top: the stream ends at once, stepped inside block_pull.
    assert hv.block_pull("tr0", "vda").ok
    assert not hv.jobs and not hv.events.pending
    assert hv.job_wait("tr0", "vda").ok  # the ended job, reported once
    assert hv.job_wait("tr0", "vda").code is OpError.NO_JOB
    assert hv.violations() == []


def test_rewrite_header_of_a_raw_file_is_refused(workdir):
    """Found by the machine (HeaderRejected escaped); fixed in bc460f2."""
    hv = _hv("libvirt-modern")
    _refused(lambda: hv.rewrite_header(_raw(workdir), "other.raw", "raw"))


def test_unreadable_raw_disk_is_not_a_violation_modern(workdir):
    """Found by the machine (violations() opened the raw top); fixed in bc460f2."""
    hv = _hv("libvirt-modern")
    path = _raw(workdir)
    hv.make_unreadable(path)
    # R4/S5: a raw local disk is only checked to exist; its chain is [top, terminator].
    assert hv.create("tr0", [DiskConfig("vda", path, "raw")]).ok
    assert hv.violations() == []


def test_unreadable_raw_disk_is_not_a_violation_after_a_snapshot_modern(workdir):
    """Found by the machine, fixed in add8612: an unreadable raw image that R4 admits without
    opening it became a backing layer through a modelled snapshot; a fresh probe read its
    header and failed, and no stale_reason covered the divergence."""
    hv = _hv("libvirt-modern")
    path = _raw(workdir)
    hv.make_unreadable(path)  # before the domain exists: no cache names it yet
    assert hv.create("tr0", [DiskConfig("vda", path, "raw")]).ok
    assert hv.snapshot("tr0", "vda", os.path.join(workdir, "snap.qcow2")).ok
    assert hv.violations() == []


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
@pytest.mark.parametrize("fault", ["delete", "replace-raw"])
def test_commit_step_after_its_parent_image_changed_does_not_raise(workdir, profile_name, fault):
    """Found by the machine, fixed in add8612: job_step rewrote the commit's parent header
    through its path, so when that backing file was deleted or replaced after the job
    started (qemu still holds it open) it raised FileNotFoundError or HeaderRejected."""
    hv = _hv(profile_name)
    version = hv.rules.overlay_qcow2_version
    base, mid, parent = _chain_files(workdir, version=version)
    top = os.path.join(workdir, "top2.qcow2")
    with open(top, "wb") as image:
        image.write(qcow2_bytes(parent, "qcow2", version))
    assert hv.create("tr0", [DiskConfig("vda", top, "qcow2")]).ok  # top <- parent <- mid <- base
    assert hv.block_commit("tr0", "vda", top=mid, base=base).ok  # qemu will rewrite parent
    if fault == "delete":
        assert hv.delete_file(parent).ok
    else:
        assert hv.replace_file(parent, bytes(RAW_SIZE)).ok
    outcome = hv.job_step("tr0", "vda")
    assert outcome.rc in (0, -1)
    hv.deliver_all()
    assert not hv.jobs


def test_profiles_covered():
    assert set(PROFILE_NAMES) <= set(PROFILES)


def _chain_files(directory: str, stem: str = "", version: int = 3) -> tuple[str, str, str]:
    """base.raw <- mid.qcow2 <- top.qcow2 with absolute names and recorded formats."""
    base = _raw(directory, f"{stem}base.raw")
    mid = os.path.join(directory, f"{stem}mid.qcow2")
    top = os.path.join(directory, f"{stem}top.qcow2")
    for path, below, fmt in ((mid, base, "raw"), (top, mid, "qcow2")):
        with open(path, "wb") as image:
            image.write(qcow2_bytes(below, fmt, version))
    return base, mid, top


def test_media_change_during_a_block_job_is_refused_modern(workdir):
    """Found by the machine (pivot raised ValueError/AssertionError); fixed in 67355df."""
    hv = _hv("libvirt-modern")
    _, _, top = _chain_files(workdir)
    disks = [DiskConfig("vda", _raw(workdir, "os.raw"), "raw")]
    disks.append(DiskConfig(CDROM, top, "qcow2", device="cdrom"))
    assert hv.create("tr0", disks).ok
    assert hv.block_commit("tr0", CDROM, active=True).ok
    assert hv.job_step("tr0", CDROM).ok
    hv.deliver_all()
    # detach and snapshot refuse a disk with an active job (JOB_ACTIVE); so does this.
    outcome = _refused(lambda: hv.change_media("tr0", CDROM, None, None))
    assert outcome.code == "job-active", outcome
    assert hv.block_job_pivot("tr0", CDROM).ok
    assert hv.violations() == []


def test_commit_delete_of_a_shared_backing_marks_the_other_cache_stale(workdir):
    """Found by the machine (violations() on the other domain); fixed in 67355df. With qemu's
    image locks the commit is refused (the next test); without them the other cache goes stale."""
    hv = Hypervisor(MODERN_WITHOUT_LOCKS)
    base, mid, top = _chain_files(workdir)
    other = os.path.join(workdir, "other.qcow2")
    with open(other, "wb") as image:
        image.write(qcow2_bytes(mid, "qcow2"))
    assert hv.create("a", [DiskConfig("vda", top, "qcow2")]).ok
    assert hv.create("b", [DiskConfig("vda", other, "qcow2")]).ok  # mid is shared, read-only
    assert hv.block_commit("a", "vda", top=mid, base=base, delete=True).ok
    assert hv.job_step("a", "vda").ok
    hv.deliver_all()
    assert not os.path.exists(mid)
    assert hv.violations() == []


def test_commit_into_a_base_another_domain_reads_is_refused_by_image_locks(workdir):
    """qemu cannot take the write lock on a base another qemu holds open read-only."""
    hv = _hv("libvirt-modern")
    base, mid, top = _chain_files(workdir)
    other = os.path.join(workdir, "other.qcow2")
    with open(other, "wb") as image:
        image.write(qcow2_bytes(mid, "qcow2"))
    assert hv.create("a", [DiskConfig("vda", top, "qcow2")]).ok
    assert hv.create("b", [DiskConfig("vda", other, "qcow2")]).ok
    refused = hv.block_commit("a", "vda", top=mid, base=base, delete=True)
    assert (refused.rc, refused.code) == (-1, OpError.IMAGE_LOCKED)
    assert os.path.exists(mid)


def test_commit_rewriting_a_shared_backing_marks_the_other_cache_stale(workdir):
    """Found by the machine, fixed in add8612: the header qemu rewrote for one domain's commit
    was a backing file of another domain, whose cache was neither marked stale nor protected
    (1.0 had no image locking), so violations() fired."""
    hv = _hv("libvirt-1.0")
    base, mid, shared = _chain_files(workdir, version=2)
    for name in ("a", "b"):
        top = os.path.join(workdir, f"{name}.qcow2")
        with open(top, "wb") as image:
            image.write(qcow2_bytes(shared, "qcow2", version=2))
        assert hv.create(name, [DiskConfig("vda", top, "qcow2")]).ok
    assert len(hv.chain("b", "vda") or ()) == 4
    # a: commit mid into base; qemu rewrites shared's header to name base.
    assert hv.block_commit("a", "vda", top=mid, base=base).ok
    assert hv.job_step("a", "vda").ok
    hv.deliver_all()
    assert hv.violations() == []


def test_reuse_snapshot_into_an_image_of_its_own_chain_keeps_indexes_unique(workdir):
    """Found by the machine, fixed in add8612: a REUSE_EXT snapshot into the disk's own active
    image was accepted; the modelled chain named that file twice, and a pull down to it kept
    the first match (names.index), duplicating the top layer and its index."""
    hv = _hv("libvirt-modern")
    _, _, top = _chain_files(workdir)
    assert hv.create("tr0", [DiskConfig("vda", top, "qcow2")]).ok
    # The chain would be top <- top <- mid <- base: a self-loop (S10) made by the cache.
    outcome = hv.snapshot("tr0", "vda", top, reuse=True)
    if outcome.ok:  # if accepted, what follows must stay consistent
        assert hv.block_pull("tr0", "vda", base=top).ok
        assert hv.job_step("tr0", "vda").ok
        hv.deliver_all()
        chain = hv.chain("tr0", "vda")
        assert chain is not None
        indexes = [layer.index for layer in chain.layers]
        assert len(set(indexes)) == len(indexes), indexes
    assert outcome.rc == -1 and outcome.code, outcome


def test_copy_destination_deleted_before_pivot_opens_a_window_modern(workdir):
    """Found by the machine, fixed in 629f05f: a copy destination deleted behind libvirt's
    back before the pivot opened no window, and the modelled pivot (no probe, S21) left
    the chain [destination] for violations() to report."""
    hv = _hv("libvirt-modern")
    _, _, top = _chain_files(workdir)
    destination = os.path.join(workdir, "copy.qcow2")
    assert hv.create("tr0", [DiskConfig("vda", top, "qcow2")]).ok
    assert hv.block_copy("tr0", "vda", destination).ok
    assert hv.delete_file(destination).ok  # qemu keeps writing to its open mirror
    assert hv.job_step("tr0", "vda").ok
    hv.deliver_all()
    assert hv.block_job_pivot("tr0", "vda").ok
    assert hv.violations() == []


@pytest.mark.parametrize("profile_name", ["seed-v2", "libvirt-1.0"])
def test_failed_job_whose_event_a_restart_lost_ends_2012(workdir, profile_name):
    """Found by the machine, fixed in 1107a39: a 2012 restart that lost the events ended
    the jobs qemu completed but kept the ones qemu failed, refusing new jobs."""
    hv = _hv(profile_name)
    base, mid, parent = _chain_files(workdir, version=2)
    top = os.path.join(workdir, "top2.qcow2")
    with open(top, "wb") as image:
        image.write(qcow2_bytes(parent, "qcow2", 2))
    assert hv.create("tr0", [DiskConfig("vda", top, "qcow2")]).ok
    assert hv.block_commit("tr0", "vda", top=mid, base=base).ok
    assert hv.delete_file(parent).ok  # qemu cannot rewrite parent: the job fails
    assert hv.job_step("tr0", "vda").ok
    assert hv.daemon_restart().ok  # 1.0-1.2.3: the event is lost with the daemon (§2.3)
    # "A job qemu has finished no longer exists in qemu, which was the only record of it."
    assert not hv.jobs
    assert hv.block_pull("tr0", "vda").code != "job-active"


def test_pull_to_a_base_named_like_the_reused_overlay_keeps_indexes_unique(workdir):
    """Found by the machine: a read-only drive's reused overlay may be a file its chain
    holds already; a pull to that lower file kept the overlay twice at completion."""
    hv = _hv("libvirt-modern")
    base = _raw(workdir)
    mid, top = (os.path.join(workdir, name) for name in ("mid.qcow2", "top.qcow2"))
    with open(mid, "wb") as image:
        image.write(qcow2_bytes(base, "raw"))
    with open(top, "wb") as image:
        image.write(qcow2_bytes(mid, "qcow2"))
    assert hv.create("tr0", [DiskConfig(CDROM, top, "qcow2", device="cdrom")]).ok
    assert hv.snapshot("tr0", CDROM, mid, reuse=True).ok
    assert hv.block_pull("tr0", CDROM, base=mid).ok
    assert hv.job_wait("tr0", CDROM).ok
    chain = hv.domains["tr0"].live_disk(CDROM).chain  # type: ignore[union-attr]
    assert chain is not None
    assert [layer.filename for layer in chain.layers] == [mid, mid, base]
    indexes = [layer.index for layer in chain.layers]
    assert len(set(indexes)) == len(indexes)
    assert hv.violations() == []
