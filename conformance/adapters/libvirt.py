"""A real libvirt daemon driving real qemu, through libvirt-python.

Each case's domains are small TCG guests with no OS (``type='qemu'``, 64 MiB),
started paused, named ``chainsuite-<pid>-<token>-<case number>-<case's name>`` so
nothing the adapter did not create is ever touched. A case's domains are removed
in the background while the next case runs; a run's leftovers (also those of a
run that crashed: its pid is gone) are removed when the next adapter opens.
Disks are SCSI (virtio-scsi): their hot-unplug needs no guest, and their
target names (``vda``) stay the case's.

Block jobs start throttled to a few bytes a second and every qcow2 image of
the case gets data in two clusters before the case runs, so a job cannot end
before the case asks for it: ``job-wait`` lifts the limit and waits for
libvirt's block-job event, never for a fixed time. The chain the adapter
reports is the live XML's ``<source index>`` and ``<backingStore>`` elements:
what libvirt has cached. Refusals keep libvirt's message and get the suite's
stable codes (``_ERROR_CODES``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from conformance.adapters.base import AdapterError, ImplementationInfo, failed, ok
from conformance.adapters.reference import LIFECYCLE_CAPABILITIES
from simulator.formats import qcow2
from simulator.storage import LocalStorage

DEFAULT_URI = "qemu:///system"
NAME_PREFIX = "chainsuite-"
MANAGED_DAEMON_MARKER = Path("/run/chainsuite-libvirtd.managed")
"""Written by scripts/libvirtd-service when it starts the daemon: only then may cases restart it."""
MODERN_SINCE = 6_001_000
"""libvirt 6.1: -blockdev always, the chain modelled rather than re-probed (libvirt-modern)."""
JOB_TIMEOUT = 60.0
RECONNECT_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
"""How long a stopping libvirtd may take before it is killed: with a block job in flight
it has been seen to take 30 s."""
THROTTLE_BYTES_PER_SECOND = 1024
"""A job's speed until job-wait lifts it: one 64 KiB cluster a minute (qemu 7.2's stream ran
unthrottled at 1 byte/s)."""
DATA_CLUSTER = 64 * 1024

SIMULATOR_HOOKS = frozenset(
    {"job-events", "determine-chain", "unreadable-files", "counters", "network-disks"}
)
"""What only a simulated hypervisor offers (or, for network disks, needs a server here)."""
CAPABILITIES = (LIFECYCLE_CAPABILITIES - SIMULATOR_HOOKS - {"daemon-restart"}) | {
    "active-commit",
    "user-backing-store",
}
"""daemon-restart is added when the suite manages the daemon."""

ENABLE_HINT = (
    "no libvirt daemon answers; start one as root with `scripts/libvirtd-service start` "
    "(installs libvirt, qemu and libvirt-python)"
)


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise AdapterError(
            "libvirt-python is not installed: pip install 'chainsuite[libvirt]' "
            "(or run scripts/libvirtd-service start as root)"
        ) from None
    return libvirt


_event_loop_started = False
_event_loop_lock = threading.Lock()


def _start_event_loop(libvirt: Any) -> None:
    """libvirt's default event loop, once per process, in a daemon thread."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Errors reach the caller as exceptions; the default handler would also print them.
        libvirt.registerErrorHandler(lambda context, error: None, None)

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


@dataclass
class _JobEvents:
    """The block-job events libvirt raised for one disk's current job, not yet consumed."""

    kinds: list[str] = field(default_factory=list)
    ended_by_caller: bool = False
    """A pivot or abort ended the job: its final event is not news to anyone."""


_EVENT_KINDS = {0: "completed", 1: "failed", 2: "canceled", 3: "ready"}
_FINAL_EVENTS = frozenset({"completed", "failed", "canceled"})


def error_code_for(message: str, op: str, args: dict[str, Any]) -> str:
    """The suite's stable code for a libvirt error message, given the call it answered."""
    for pattern, code in _ERROR_CODES:
        match = re.search(pattern, message)
        if match is None:
            continue
        if code == "image-not-found":
            return _missing_image_code(match.groupdict(), op, args)
        if code == "missing-source":
            # Only a disk (not a cdrom or floppy) must have a source: ejecting one is the
            # media change that cannot be done, anything else a definition it refuses.
            return "not-removable" if op == "change-media" else "invalid-config"
        return code
    return "unknown"


_ERROR_CODES: tuple[tuple[str, str], ...] = (
    (r"Domain not found|no domain with matching name", "no-such-domain"),
    (r"domain '[^']*' already exists|already exists with uuid", "domain-exists"),
    (r"domain is not running", "domain-not-running"),
    (r"cannot undefine transient domain", "domain-transient"),
    (r"domain is already running|domain is already active", "domain-running"),
    (r"target \S+ already exists|target '[^']*' duplicated", "disk-exists"),
    (
        r"disk '?[^' ]*'? not found|No device with bus|not found in domain|no disk named",
        "no-such-disk",
    ),
    (r"not ready for pivot", "job-not-ready"),
    (
        r"already in active block job|block copy still active|has an active block job"
        r"|block job is running",
        "job-active",
    ),
    (r"does not have an active block job|No active block job|no active block job", "no-job"),
    # 9.0's depth limit, which is also how it ends a loop.
    (r"self-referential or too deeply nested|more than \d+ layers deep", "too-deep"),
    (r"is self-referential", "backing-loop"),
    (r"was not specified in the image metadata", "backing-format-unspecified"),
    (r"missing (destination|existing) file", "file-missing"),
    (r'Failed to get (shared )?"write" lock', "image-locked"),
    (r"Cannot access backing file", "backing-missing"),
    (r"Cannot access storage file|No such file or directory", "not-found"),
    (r"Permission denied", "permission-denied"),
    (r"unknown driver format value", "unknown-format"),
    (r"could not find image '[^']*' beneath|could not find base image", "base-not-found"),
    (r"could not find image '(?P<name>[^']*)' in chain", "image-not-found"),
    (r"could not find backing store index '(?P<name>\d+)'", "image-not-found"),
    (r"requested target '(?P<target>[^']*)' does not match target", "image-not-found"),
    (r"is not immediately below", "base-not-below-top"),
    (r"has no backing file", "top-has-no-backing"),
    (r"active layer requires active flag|active commit requested", "active-commit-needs-flag"),
    (r"absolute path must be used|must be absolute", "invalid-path"),
    (r"already exists and is not a block device|[Ff]ile exists", "file-exists"),
    (r"only in removable drives|is not removable|Cannot change media", "not-removable"),
    (r"missing source information for device", "missing-source"),
    # A drive whose medium qemu no longer has (a refused media change, an eject): libvirt
    # 9.0 names the old format node to qemu, or asks its size.
    (
        r"Cannot find device='libvirt-\d+-format' nor node-name|Device 'libvirt-\d+-format' "
        r"not found|failed to update capacity data for block node 'libvirt-\d+-format'",
        "medium-not-in-qemu",
    ),
    # 9.0 gets as far as qemu with an empty drive's snapshot or copy, then fails on its null
    # node; a pull, or a snapshot to a reused overlay, sends qemu a null device or node.
    (r"failed to update capacity data for block node '\(null\)'", "disk-has-no-source"),
    (r"argument key '(device|node)' must not have null value", "disk-has-no-source"),
    (r"does not support backing store", "invalid-config"),
    (r"Image is not in \w+ format", "image-not-in-format"),
    (r"not supported|unsupported", "unsupported"),
)
"""libvirt 9.0's messages (regular expressions) and the suite's codes, first match wins."""


def _missing_image_code(named: dict[str, str | None], op: str, args: dict[str, Any]) -> str:
    # libvirt names the image, the index or the other disk it could not find, not which
    # argument it was.
    name, target = named.get("name"), named.get("target")
    for argument, code in (("top", "top-not-found"), ("base", "base-not-found")):
        given = args.get(argument)
        if given is None:
            continue
        if name is not None and (given == name or given.endswith(f"[{name}]")):
            return code
        if target is not None and given.startswith(f"{target}["):
            return code
    return "base-not-found" if op == "block-pull" else "top-not-found"


class LibvirtAdapter:
    """Runs cases on a libvirt daemon at ``uri`` (default qemu:///system)."""

    def __init__(self, uri: str = DEFAULT_URI) -> None:
        self._libvirt = _libvirt()
        if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
            # libvirt's client writes to the daemon's socket: a daemon gone (a restart) must
            # be an error of the call, not a SIGPIPE that ends the process.
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        _start_event_loop(self._libvirt)
        self.uri = uri
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-"
        self._case_prefix = self.prefix
        """Each case names its domains afresh, so that the last case's can be removed
        while this one runs (libvirt takes over a second to stop a domain)."""
        self._cases = 0
        self._remover = _DomainRemover(uri)
        self._connection = self._connect()
        version = self._connection.getLibVersion()
        self.may_restart = self._daemon_is_ours()
        capabilities = CAPABILITIES | ({"daemon-restart"} if self.may_restart else set())
        self._info = ImplementationInfo(
            name="libvirt",
            version=_dotted(version),
            profile="libvirt-modern" if version >= MODERN_SINCE else "libvirt-1.0",
            capabilities=frozenset(capabilities),
            details={"uri": uri, "hypervisor": _dotted(self._connection.getVersion())},
        )
        self._events: dict[tuple[str, str], _JobEvents] = {}
        self._events_changed = threading.Condition()
        self._callback_id: int | None = None
        self._watch_jobs()
        self._directory: Path | None = None
        self.remove_leftovers()

    @property
    def info(self) -> ImplementationInfo:
        return self._info

    # -- connection ---------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            return self._libvirt.open(self.uri)
        except self._libvirt.libvirtError as error:
            raise AdapterError(f"{self.uri}: {error.get_error_message()}; {ENABLE_HINT}") from None

    def _daemon_is_ours(self) -> bool:
        return self.uri == DEFAULT_URI and os.geteuid() == 0 and MANAGED_DAEMON_MARKER.exists()

    def _watch_jobs(self) -> None:
        self._callback_id = self._connection.domainEventRegisterAny(
            None,
            self._libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
            self._on_block_job,
            None,
        )

    def _on_block_job(
        self, connection: Any, domain: Any, disk: str, job_type: int, status: int, opaque: Any
    ) -> None:
        kind = _EVENT_KINDS.get(status, str(status))
        with self._events_changed:
            events = self._events.setdefault((domain.name(), disk), _JobEvents())
            if not (events.ended_by_caller and kind in _FINAL_EVENTS):
                events.kinds.append(kind)
            self._events_changed.notify_all()

    # -- cases ----------------------------------------------------------------------

    def begin_case(self, directory: Path) -> None:
        self._directory = directory
        self._cases += 1
        self._case_prefix = f"{self.prefix}{self._cases}-"
        with self._events_changed:
            self._events.clear()
        _give_images_data(directory)

    def end_case(self) -> None:
        """The case's domains are destroyed and undefined in the background."""
        self._remover.remove(self._case_prefix)
        self._directory = None

    def wait_for_removals(self) -> None:
        """Returns once the domains of the cases ended so far are removed."""
        self._remover.wait()

    def close(self) -> None:
        self._remover.close()
        self.remove_leftovers(mine_only=True)
        with contextlib.suppress(self._libvirt.libvirtError):
            if self._callback_id is not None:
                self._connection.domainEventDeregisterAny(self._callback_id)
            self._connection.close()

    def remove_leftovers(self, mine_only: bool = False) -> list[str]:
        """Destroys and undefines this adapter's domains and those of runs whose process is gone."""
        return _remove_domains(
            self._libvirt, self._connection, lambda name: self._is_leftover(name, mine_only)
        )

    def _is_leftover(self, name: str, mine_only: bool) -> bool:
        if name.startswith(self.prefix):
            return True
        if mine_only or not name.startswith(NAME_PREFIX):
            return False
        pid = name[len(NAME_PREFIX) :].split("-", 1)[0]
        return pid.isdigit() and not Path(f"/proc/{pid}").exists()

    # -- operations ---------------------------------------------------------------------

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, "_" + op.replace("-", "_"), None)
        if handler is None:
            return failed("unsupported", f"operation {op!r} is not supported")
        try:
            result: dict[str, Any] = handler(args)
        except self._libvirt.libvirtError as error:
            message = (error.get_error_message() or str(error)).replace(self._case_prefix, "")
            return failed(error_code_for(message, op, args), message)
        return result

    def _name(self, domain: str) -> str:
        return self._case_prefix + domain

    def _domain(self, domain: str) -> Any:
        return self._connection.lookupByName(self._name(domain))

    def _define(self, args: dict[str, Any]) -> dict[str, Any]:
        uuid = None
        with contextlib.suppress(self._libvirt.libvirtError):
            uuid = self._domain(args["domain"]).UUIDString()
        self._connection.defineXML(self._domain_xml(args["domain"], args.get("disks", ()), uuid))
        return ok()

    def _create(self, args: dict[str, Any]) -> dict[str, Any]:
        xml = self._domain_xml(args["domain"], args.get("disks", ()), None)
        self._connection.createXML(xml, self._libvirt.VIR_DOMAIN_START_PAUSED)
        return ok()

    def _undefine(self, args: dict[str, Any]) -> dict[str, Any]:
        self._domain(args["domain"]).undefineFlags(self._libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        return ok()

    def _start(self, args: dict[str, Any]) -> dict[str, Any]:
        self._domain(args["domain"]).createWithFlags(self._libvirt.VIR_DOMAIN_START_PAUSED)
        return ok()

    def _destroy(self, args: dict[str, Any]) -> dict[str, Any]:
        self._domain(args["domain"]).destroy()
        return ok()

    def _attach(self, args: dict[str, Any]) -> dict[str, Any]:
        self._domain(args["domain"]).attachDeviceFlags(
            _disk_xml(args["disk"]), self._libvirt.VIR_DOMAIN_AFFECT_LIVE
        )
        return ok()

    def _detach(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(args["domain"])
        disk = self._live_disk(domain, args["target"])
        # A disk the live XML lacks (or a domain that is off) is still asked for, so that
        # libvirt itself answers.
        xml = ET.tostring(disk, "unicode") if disk is not None else _disk_xml(args)
        domain.detachDeviceFlags(xml, self._libvirt.VIR_DOMAIN_AFFECT_LIVE)
        self._wait_until_gone(domain, args["target"])
        return ok()

    def _change_media(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(args["domain"])
        disk = self._live_disk(domain, args["target"])
        found = disk if disk is not None else ET.Element("disk", device="cdrom")
        spec = {
            "target": args["target"],
            "path": args.get("path"),
            "format": args.get("format"),
            "device": found.get("device", "disk"),
            "type": found.get("type", "file"),
        }
        domain.updateDeviceFlags(
            _disk_xml(spec, bus=_bus_of(found) if disk is not None else None),
            self._libvirt.VIR_DOMAIN_AFFECT_LIVE | self._libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE,
        )
        return ok()

    def _snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(args["domain"])
        # The snapshotted disk, then every other disk left out. A target the domain lacks
        # is named alone, so that libvirt itself refuses it ("no disk named").
        disks = [
            f"<disk name={quoteattr(args['target'])} snapshot='external'>"
            f"<driver type='qcow2'/><source file={quoteattr(args['overlay'])}/></disk>"
        ]
        others = [target.get("dev") for target in self._live_xml(domain).iter("target")]
        if args["target"] in others:
            for dev in others:
                if dev is not None and dev != args["target"]:
                    disks.append(f"<disk name={quoteattr(dev)} snapshot='no'/>")
        lv = self._libvirt
        flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | lv.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        if args.get("reuse"):
            flags |= lv.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        xml = f"<domainsnapshot><disks>{''.join(disks)}</disks></domainsnapshot>"
        domain.snapshotCreateXML(xml, flags)
        return ok()

    def _block_pull(self, args: dict[str, Any]) -> dict[str, Any]:
        lv = self._libvirt
        domain = self._domain(args["domain"])
        base = args.get("base")
        with self._job_starts(domain, args["target"]):
            if base is None:
                domain.blockPull(
                    args["target"],
                    THROTTLE_BYTES_PER_SECOND,
                    lv.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES,
                )
            else:
                domain.blockRebase(
                    args["target"],
                    base,
                    THROTTLE_BYTES_PER_SECOND,
                    lv.VIR_DOMAIN_BLOCK_REBASE_BANDWIDTH_BYTES,
                )
        return ok()

    def _block_commit(self, args: dict[str, Any]) -> dict[str, Any]:
        lv = self._libvirt
        flags = lv.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES
        for name, flag in (
            ("active", lv.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE),
            ("shallow", lv.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW),
            ("delete", lv.VIR_DOMAIN_BLOCK_COMMIT_DELETE),
        ):
            if args.get(name):
                flags |= flag
        domain = self._domain(args["domain"])
        with self._job_starts(domain, args["target"]):
            domain.blockCommit(
                args["target"], args.get("base"), args.get("top"), THROTTLE_BYTES_PER_SECOND, flags
            )
        return ok()

    def _block_copy(self, args: dict[str, Any]) -> dict[str, Any]:
        lv = self._libvirt
        flags = lv.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        if args.get("shallow"):
            flags |= lv.VIR_DOMAIN_BLOCK_COPY_SHALLOW
        if args.get("reuse"):
            flags |= lv.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
        # The protocol's destination is a qcow2 image, reused or not.
        destination = args["destination"]
        xml = (
            f"<disk type='file'><driver type='qcow2'/>"
            f"<source file={quoteattr(destination)}/></disk>"
        )
        domain = self._domain(args["domain"])
        with self._job_starts(domain, args["target"]):
            domain.blockCopy(
                args["target"],
                xml,
                {lv.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH: THROTTLE_BYTES_PER_SECOND},
                flags,
            )
        return ok()

    def _job_wait(self, args: dict[str, Any]) -> dict[str, Any]:
        """Lifts the job's throttle and waits for libvirt's event that it completed or is ready."""
        domain = self._domain(args["domain"])
        target = args["target"]
        key = (domain.name(), target)
        running = bool(domain.blockJobInfo(target, 0))
        with self._events_changed:
            events = self._events.get(key, _JobEvents())
            news = bool(events.kinds) and not events.ended_by_caller
        if not running and not news:
            return failed("no-job", f"no active block job on disk '{target}'")
        if running:
            with contextlib.suppress(self._libvirt.libvirtError):
                domain.blockJobSetSpeed(target, 0, 0)
        kind = self._wait_for_event(key)
        if kind == "failed":
            return failed("job-failed", f"the block job on disk '{target}' failed")
        if kind == "canceled":
            return failed("job-canceled", f"the block job on disk '{target}' was canceled")
        return ok()

    def _pivot(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(args["domain"])
        domain.blockJobAbort(args["target"], self._libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        self._job_ended_by_caller(domain, args["target"])
        return ok()

    def _abort(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(args["domain"])
        domain.blockJobAbort(args["target"], 0)
        self._job_ended_by_caller(domain, args["target"])
        return ok()

    def _daemon_restart(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.may_restart:
            return failed("unsupported", "the libvirt daemon is not managed by the suite")
        _restart_libvirtd()
        with contextlib.suppress(self._libvirt.libvirtError):
            self._connection.close()
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while True:
            try:
                self._connection = self._libvirt.open(self.uri)
                break
            except self._libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise AdapterError("libvirtd did not come back after a restart") from None
                time.sleep(0.05)
        self._watch_jobs()
        self._wait_for_reconnect()
        self._forget_unwaited_ends()
        return ok()

    def _chain(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self._domain(args["domain"])
        if not domain.isActive():
            return failed("domain-not-running", f"domain '{args['domain']}' is not running")
        disk = self._live_disk(domain, args["target"])
        if disk is None:
            return failed("no-such-disk", f"disk '{args['target']}' not found")
        return ok(**chain_from_disk_xml(disk))

    def _fault(self, args: dict[str, Any]) -> dict[str, Any]:
        kind, path = args["fault"], args["path"]
        # A replaced file may have been deleted before: then it returns.
        if kind != "replace" and not os.path.lexists(path):
            return failed("file-missing", f"{path}: no such file")
        if kind == "delete":
            os.unlink(path)
        elif kind == "replace":
            try:  # read first: the content may come from the file itself
                content = Path(args["content_from"]).read_bytes()
            except OSError as error:
                return failed("file-missing", f"{args['content_from']}: {error.strerror}")
            Path(path).write_bytes(content)
        elif kind == "rewrite-header":
            if not _is_qcow2(Path(path)):
                return failed("unsupported", f"only a qcow2 header can be rewritten: '{path}'")
            qcow2.rewrite_backing(
                LocalStorage(), path, args.get("backing"), args.get("backing_format")
            )
        else:
            return failed("unsupported", f"fault {kind!r} is not supported against libvirt")
        return ok()

    # -- helpers --------------------------------------------------------------------

    def _domain_xml(self, name: str, disks: Any, uuid: str | None) -> str:
        devices = "".join(_disk_xml(disk) for disk in disks)
        return (
            "<domain type='qemu'>"
            f"<name>{_escape(self._name(name))}</name>"
            + (f"<uuid>{uuid}</uuid>" if uuid else "")
            + "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<features><acpi/></features>"
            "<on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>"
            "<devices>"
            "<controller type='scsi' index='0' model='virtio-scsi'/>"
            f"{devices}"
            "</devices></domain>"
        )

    def _live_xml(self, domain: Any) -> ET.Element:
        return ET.fromstring(domain.XMLDesc(0))

    def _live_disk(self, domain: Any, target: str) -> ET.Element | None:
        for disk in _disks(self._live_xml(domain)):
            element = disk.find("target")
            if element is not None and element.get("dev") == target:
                return disk
        return None

    def _wait_until_gone(self, domain: Any, target: str) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT
        while self._live_disk(domain, target) is not None:
            if time.monotonic() > deadline:
                raise AdapterError(f"disk {target} was not unplugged within {JOB_TIMEOUT:.0f} s")
            time.sleep(0.01)

    @contextlib.contextmanager
    def _job_starts(self, domain: Any, target: str) -> Iterator[None]:
        """Events from here on belong to the new job; a refused job leaves the old one's."""
        key = (domain.name(), target)
        with self._events_changed:
            previous = self._events.get(key)
            self._events[key] = _JobEvents()
        try:
            yield
        except BaseException:
            with self._events_changed:
                if previous is not None:
                    self._events[key] = previous
            raise

    def _job_ended_by_caller(self, domain: Any, target: str) -> None:
        with self._events_changed:
            self._events[(domain.name(), target)] = _JobEvents(ended_by_caller=True)

    def _wait_for_event(self, key: tuple[str, str]) -> str:
        """The next event of the disk's job; a final one is consumed."""
        deadline = time.monotonic() + JOB_TIMEOUT
        with self._events_changed:
            while True:
                events = self._events.setdefault(key, _JobEvents())
                final = [kind for kind in events.kinds if kind in _FINAL_EVENTS]
                if final:
                    self._events[key] = _JobEvents(ended_by_caller=True)
                    return final[-1]
                if "ready" in events.kinds:
                    return "ready"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AdapterError(
                        f"no block-job event for disk {key[1]} within {JOB_TIMEOUT:.0f} s"
                    )
                self._events_changed.wait(remaining)

    def _forget_unwaited_ends(self) -> None:
        """A job that ended before a restart is news to no one after it: whether its event
        reached this client before the daemon went down is a race, so none is kept (a
        late one is ignored); a job still running keeps its events."""
        with self._events_changed:
            for (name, target), events in list(self._events.items()):
                if events.ended_by_caller:
                    continue
                try:
                    running = bool(self._connection.lookupByName(name).blockJobInfo(target, 0))
                except self._libvirt.libvirtError:
                    running = False
                if not running:
                    self._events[(name, target)] = _JobEvents(ended_by_caller=True)

    def _wait_for_reconnect(self) -> None:
        """After a restart libvirtd reconnects to each domain in a job of its own; wait for it."""
        for domain in self._connection.listAllDomains():
            if domain.name().startswith(self._case_prefix) and domain.isActive():
                for disk in _disks(self._live_xml(domain)):
                    target = disk.find("target")
                    if target is not None and disk.get("device", "disk") == "disk":
                        # A query job: it waits for the reconnect's job to finish.
                        domain.blockInfo(target.get("dev"), 0)
                        break


class _DomainRemover:
    """Destroys and undefines finished cases' domains on threads of its own, with a
    connection of its own: the next case need not wait for them, and libvirt stops several
    domains at once as fast as one (it spends the time waiting for each qemu). A removal
    that fails (a daemon restarted meanwhile) is tried again for RECONNECT_TIMEOUT; what
    still remains, the adapter's closing sweep removes."""

    THREADS = 8

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._libvirt = _libvirt()
        self._connection: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="chainsuite-remover")
        self._pending: list[Future[None]] = []

    def remove(self, prefix: str) -> None:
        with self._lock:
            self._pending = [future for future in self._pending if not future.done()]
            self._pending.append(self._pool.submit(self._remove, prefix))

    def wait(self) -> None:
        """Returns once every domain handed over is removed (or could not be)."""
        with self._lock:
            pending = list(self._pending)
        futures.wait(pending)

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()
        if self._connection is not None:
            with contextlib.suppress(self._libvirt.libvirtError):
                self._connection.close()

    def _remove(self, prefix: str) -> None:
        wanted = partial(_has_prefix, prefix)
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while True:
            try:
                connection = self._connected()
                _remove_domains(self._libvirt, connection, wanted)
                if not any(wanted(domain.name()) for domain in connection.listAllDomains()):
                    return
            except self._libvirt.libvirtError:
                with self._lock:
                    self._connection = None
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def _connected(self) -> Any:
        with self._lock:
            if self._connection is None or not self._connection.isAlive():
                self._connection = self._libvirt.open(self._uri)
            return self._connection


def _has_prefix(prefix: str, name: str) -> bool:
    return name.startswith(prefix)


def _remove_domains(libvirt: Any, connection: Any, wanted: Callable[[str], bool]) -> list[str]:
    """Destroys and undefines the domains whose names are ``wanted``."""
    removed = []
    for domain in connection.listAllDomains():
        name = domain.name()
        if not wanted(name):
            continue
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isActive():
                domain.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isPersistent():
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        removed.append(name)
    return removed


def chain_from_disk_xml(disk: ET.Element) -> dict[str, Any]:
    """The chain a live ``<disk>`` element shows: its source, then its ``<backingStore>`` elements.

    An empty ``<backingStore/>`` ends a chain known to have nothing more below;
    a layer without one leaves what lies below it unknown.
    """
    source = disk.find("source")
    if source is None or not _source_name(source):
        return {"chain": None}
    driver = disk.find("driver")
    layers = [
        _layer(disk.get("type", "file"), source, driver.get("type") if driver is not None else None)
    ]
    element = disk
    terminated = False
    while True:
        below = element.find("backingStore")
        if below is None:
            break
        below_source = below.find("source")
        if below_source is None:
            terminated = True
            break
        below_format = below.find("format")
        layers.append(
            _layer(
                below.get("type", "file"),
                below_source,
                below_format.get("type") if below_format is not None else None,
                below.get("index"),
            )
        )
        element = below
    return {"chain": layers, "terminated": terminated}


def _layer(
    kind: str, source: ET.Element, fmt: str | None, index: str | None = None
) -> dict[str, Any]:
    position = source.get("index") if index is None else index
    layer: dict[str, Any] = {"filename": _source_name(source), "format": fmt, "type": kind}
    if position is not None:
        layer["index"] = int(position)
    return layer


def _source_name(source: ET.Element) -> str | None:
    return source.get("file") or source.get("dev") or source.get("name")


def _disks(domain: ET.Element) -> Iterator[ET.Element]:
    devices = domain.find("devices")
    if devices is not None:
        yield from devices.findall("disk")


def _bus_of(disk: ET.Element) -> str:
    target = disk.find("target")
    return (target.get("bus") if target is not None else None) or "scsi"


def _default_bus(spec: dict[str, Any]) -> str:
    device = spec.get("device", "disk")
    if device == "floppy":
        return "fdc"
    if device == "cdrom":
        return "ide" if spec["target"].startswith("hd") else "scsi"
    return "scsi"


def _disk_xml(spec: dict[str, Any], bus: str | None = None) -> str:
    kind = spec.get("type", "file")
    device = spec.get("device", "disk")
    parts = [f"<disk type={quoteattr(kind)} device={quoteattr(device)}>"]
    if spec.get("format"):
        parts.append(f"<driver name='qemu' type={quoteattr(spec['format'])}/>")
    if spec.get("path") is not None:
        attribute = "dev" if kind == "block" else "file"
        parts.append(f"<source {attribute}={quoteattr(spec['path'])}/>")
    for item in spec.get("backing", ()):
        parts.append(
            f"<backingStore type='file'><format type={quoteattr(item['format'])}/>"
            f"<source file={quoteattr(item['path'])}/>"
        )
    if spec.get("backing_terminated"):
        parts.append("<backingStore/>")
    parts.append("</backingStore>" * len(spec.get("backing", ())))
    parts.append(
        f"<target dev={quoteattr(spec['target'])} bus={quoteattr(bus or _default_bus(spec))}/>"
    )
    if device in ("cdrom", "floppy"):
        parts.append("<readonly/>")
    parts.append("</disk>")
    return "".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _dotted(version: int) -> str:
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def _give_images_data(directory: Path) -> None:
    """Writes two clusters into each qcow2 image so that a throttled job has work left.

    Each image gets its own offsets, so a pull or commit copies something from
    every layer it moves. One qemu-io opens each image alone (no backing) in
    turn; an image it cannot open is left as it is.
    """
    commands: list[str] = []
    for slot, path in enumerate(_qcow2_images(directory)):
        spec = {
            "driver": "qcow2",
            "backing": None,
            "cache": {"no-flush": True},
            "file": {"driver": "file", "filename": str(path)},
        }
        commands += ["-c", "open json:" + json.dumps(spec, separators=(",", ":"))]
        for offset in (slot % 8, 8 + slot % 8):
            commands += ["-c", f"write -P 0x5a {offset * DATA_CLUSTER} {DATA_CLUSTER}"]
        commands += ["-c", "close"]
    if commands:
        subprocess.run(["qemu-io", *commands], capture_output=True, check=False, timeout=120)


def _qcow2_images(directory: Path) -> list[Path]:
    found = []
    for path in sorted(directory.rglob("*")):
        if not path.is_symlink() and path.is_file() and _is_qcow2(path):
            found.append(path)
    return found


def _is_qcow2(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as image:
        return image.read(4) == qcow2.MAGIC
    return False


def _restart_libvirtd() -> None:
    """Stops libvirtd and starts it again; qemu processes keep running (a daemon restart).

    The pidfile can lag behind a daemon that has only just started, so every libvirtd
    process is stopped (killed if it does not stop within STOP_TIMEOUT: the status XML it
    keeps for each domain is written as things change), and a start that finds the
    pidfile still held is tried again."""
    failure = ""
    for _attempt in range(3):
        running = _libvirtd_pids()
        stops = ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, RECONNECT_TIMEOUT))
        for signum, timeout in stops:
            for pid in set(running) & set(_libvirtd_pids()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + timeout
            while set(running) & set(_libvirtd_pids()) and time.monotonic() < deadline:
                time.sleep(0.02)
        started = subprocess.run(
            ["libvirtd", "-d"], capture_output=True, text=True, timeout=RECONNECT_TIMEOUT
        )
        if started.returncode == 0:
            return
        failure = started.stderr.strip()
        time.sleep(0.2)
    raise AdapterError(f"libvirtd did not start again: {failure}")


def _libvirtd_pids() -> list[int]:
    """The living libvirtd processes (a zombie holds no lock and serves no one)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            name, _, rest = (entry / "stat").read_text().partition(") ")
            if name.endswith("(libvirtd") and not rest.startswith("Z"):
                pids.append(int(entry.name))
    return pids
