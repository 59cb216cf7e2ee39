"""The reference implementation as an adapter: the prober and the simulated hypervisor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conformance.adapters.base import AdapterError, ImplementationInfo, failed, ok
from simulator.hypervisor import BackingSpec, DiskConfig, DiskType, Hypervisor, Outcome
from simulator.model import Chain, ChainError
from simulator.prober import Prober
from simulator.profiles import Profile, get_profile

LIFECYCLE_CAPABILITIES = frozenset(
    {
        "lifecycle",
        "transient",
        "hotplug",
        "media-change",
        "snapshot",
        "block-pull",
        "block-commit",
        "block-copy",
        "job-events",
        "daemon-restart",
        "fault-injection",
        "unreadable-files",
        "determine-chain",
        "network-disks",
        "counters",
    }
)


def capabilities_of(profile: Profile) -> frozenset[str]:
    """What the reference can do under ``profile`` (the qemu profile only probes)."""
    if profile.name == "qemu":
        return frozenset({"probe"})
    extra = set()
    if profile.cache.active_commit:
        extra.add("active-commit")
    if profile.cache.user_backing_store:
        extra.add("user-backing-store")
    return frozenset({"probe"}) | LIFECYCLE_CAPABILITIES | extra


class ReferenceAdapter:
    """Runs each case on a fresh simulated hypervisor under one profile."""

    def __init__(self, profile: str = "libvirt-modern") -> None:
        try:
            self.profile = get_profile(profile)
        except KeyError as error:
            raise AdapterError(str(error)) from None
        self._info = ImplementationInfo(
            name="reference",
            version="chainsuite",
            profile=self.profile.name,
            capabilities=capabilities_of(self.profile),
            details={"summary": self.profile.summary},
        )
        self.hypervisor = Hypervisor(self.profile)

    @property
    def info(self) -> ImplementationInfo:
        return self._info

    def begin_case(self, directory: Path) -> None:
        self.hypervisor = Hypervisor(self.profile)

    def end_case(self) -> None:
        for name in list(self.hypervisor.domains):
            self.hypervisor.destroy(name)
            self.hypervisor.undefine(name)

    def close(self) -> None:
        self.end_case()

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, "_" + op.replace("-", "_"), None)
        if handler is None:
            return failed("unsupported", f"operation {op!r} is not supported")
        result: dict[str, Any] = handler(args)
        return result

    # -- operations -----------------------------------------------------------------

    def _probe(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            chain = Prober(self.profile).probe(args["path"], args.get("format"))
        except ChainError as error:
            return failed(error.code.value, error.message)
        return ok(**_chain_json(chain))

    def _define(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.define(args["domain"], _disks(args)))

    def _create(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.create(args["domain"], _disks(args)))

    def _undefine(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.undefine(args["domain"]))

    def _start(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.start(args["domain"]))

    def _destroy(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.destroy(args["domain"]))

    def _attach(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.attach(args["domain"], _disk(args["disk"])))

    def _detach(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.detach(args["domain"], args["target"]))

    def _change_media(self, args: dict[str, Any]) -> dict[str, Any]:
        hv = self.hypervisor
        return _outcome(
            hv.change_media(args["domain"], args["target"], args.get("path"), args.get("format"))
        )

    def _snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(
            self.hypervisor.snapshot(
                args["domain"], args["target"], args["overlay"], reuse=args.get("reuse", False)
            )
        )

    def _block_pull(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(
            self.hypervisor.block_pull(args["domain"], args["target"], args.get("base"))
        )

    def _block_commit(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(
            self.hypervisor.block_commit(
                args["domain"],
                args["target"],
                args.get("top"),
                args.get("base"),
                active=args.get("active", False),
                shallow=args.get("shallow", False),
                delete=args.get("delete", False),
            )
        )

    def _block_copy(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(
            self.hypervisor.block_copy(
                args["domain"],
                args["target"],
                args["destination"],
                shallow=args.get("shallow", False),
                reuse=args.get("reuse", False),
            )
        )

    def _job_wait(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.job_wait(args["domain"], args["target"]))

    def _job_step(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.job_step(args["domain"], args["target"]))

    def _deliver(self, args: dict[str, Any]) -> dict[str, Any]:
        reverse = args.get("order") == "reversed"
        self.hypervisor.deliver_all((lambda events: events[::-1]) if reverse else None)
        return ok()

    def _pivot(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.block_job_pivot(args["domain"], args["target"]))

    def _abort(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.block_job_abort(args["domain"], args["target"]))

    def _daemon_restart(self, args: dict[str, Any]) -> dict[str, Any]:
        return _outcome(self.hypervisor.daemon_restart())

    def _chain(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self.hypervisor.domains.get(args["domain"])
        if domain is None:
            return failed("no-such-domain", f"no domain with matching name '{args['domain']}'")
        if not domain.running:
            return failed("domain-not-running", f"domain '{args['domain']}' is not running")
        disk = domain.live_disk(args["target"])
        if disk is None:
            return failed("no-such-disk", f"disk '{args['target']}' not found")
        if disk.chain is None:
            return ok(chain=None)
        return ok(**_chain_json(disk.chain))

    def _determine_chain(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = self.hypervisor.domains.get(args["domain"])
        disk = domain.live_disk(args["target"]) if domain else None
        if domain is None or disk is None:
            return failed("no-such-disk", f"disk '{args['target']}' not found")
        outcome = self.hypervisor.determine_disk_chain(domain, disk, args.get("force", False))
        result = _outcome(outcome)
        result.update(_chain_json(disk.chain) if disk.chain else {"chain": None})
        return result

    def _fault(self, args: dict[str, Any]) -> dict[str, Any]:
        hv = self.hypervisor
        kind, path = args["fault"], args["path"]
        if kind == "delete":
            return _outcome(hv.delete_file(path))
        if kind == "unreadable":
            return _outcome(hv.make_unreadable(path))
        if kind == "replace":
            try:
                content = Path(args["content_from"]).read_bytes()
            except OSError as error:
                return failed("file-missing", f"{args['content_from']}: {error.strerror}")
            return _outcome(hv.replace_file(path, content))
        return _outcome(hv.rewrite_header(path, args.get("backing"), args.get("backing_format")))

    def _counters(self, args: dict[str, Any]) -> dict[str, Any]:
        counters = self.hypervisor.counters
        return ok(
            counters={
                "probes": counters.probes,
                "header-bytes-read": counters.header_bytes_read,
                "probes-of-open-files": counters.probes_of_open_files,
                "stale-operations": counters.stale_operations,
                "files-granted": sum(len(files) for files in self.hypervisor.granted.values()),
            }
        )


def _outcome(outcome: Outcome) -> dict[str, Any]:
    if outcome.code is None:
        return ok() if outcome.rc == 0 else failed("unknown", "failed", outcome.rc)
    return failed(str(outcome.code), outcome.message or "", outcome.rc)


def _chain_json(chain: Chain) -> dict[str, Any]:
    return {
        "chain": [_layer_json(layer) for layer in chain.to_json()],
        "terminated": chain.terminated,
    }


def _layer_json(layer: dict[str, Any]) -> dict[str, Any]:
    layer.pop("backing-known", None)
    return layer


def _disk(spec: dict[str, Any]) -> DiskConfig:
    return DiskConfig(
        target=spec["target"],
        path=spec.get("path"),
        format=spec.get("format"),
        type=DiskType(spec.get("type", "file")),
        device=spec.get("device", "disk"),
        backing=tuple(
            BackingSpec(item["path"], item["format"]) for item in spec.get("backing", ())
        ),
        backing_terminated=spec.get("backing_terminated", False),
    )


def _disks(args: dict[str, Any]) -> list[DiskConfig]:
    return [_disk(spec) for spec in args.get("disks", ())]
