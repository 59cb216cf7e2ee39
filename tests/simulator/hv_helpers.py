"""Helpers for the simulated hypervisor's tests: images made with the qcow2 encoder, profiles,
and short ways to run a domain and finish its block jobs.

Every image is written into the test's ``tmp_path`` (resolved, so that the 2012 profiles'
canonical backing paths are the names the test wrote) with an absolute path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from simulator.formats import qcow2
from simulator.hypervisor import DiskConfig, Hypervisor, Outcome
from simulator.model import Chain
from simulator.profiles import LIBVIRT_1_0, LIBVIRT_MODERN, SEED_V2, Profile

MIB = 1024 * 1024

MODERN = LIBVIRT_MODERN
MODERN_WITHOUT_LOCKS = dataclasses.replace(
    LIBVIRT_MODERN, cache=dataclasses.replace(LIBVIRT_MODERN.cache, image_locks=False)
)
"""libvirt-modern over a qemu run with file locking off: two domains may share what one writes."""
PROFILES_2012 = [pytest.param(SEED_V2, id="seed-v2"), pytest.param(LIBVIRT_1_0, id="libvirt-1.0")]
LIBVIRT_PROFILES = [*PROFILES_2012, pytest.param(LIBVIRT_MODERN, id="libvirt-modern")]
"""The profiles with a cache (qemu is a probe-only profile)."""


def is_2012(profile: Profile) -> bool:
    """seed-v2 and libvirt-1.0: the cache of October 2012."""
    return profile.name in (SEED_V2.name, LIBVIRT_1_0.name)


def with_cache_rules(profile: Profile, **changes: Any) -> Profile:
    """``profile`` with some of its cache rules replaced."""
    return dataclasses.replace(profile, cache=dataclasses.replace(profile.cache, **changes))


def qcow2_file(
    path: Path | str,
    backing: str | None = None,
    backing_format: str | None = "qcow2",
    *,
    version: int = 2,
    cluster_bits: int = 16,
) -> str:
    """An empty qcow2 image at ``path`` whose header records ``backing`` verbatim.

    Version 2 by default: every era reads it (libvirt 1.0 looks for the backing-format
    extension at byte 72, where a version 3 header still has its feature fields)."""
    name = backing.encode() if backing is not None else None
    fmt = backing_format if backing is not None else None
    image = qcow2.Qcow2Image(MIB, name, fmt, version, cluster_bits)
    Path(path).write_bytes(qcow2.encode(image))
    return str(path)


def raw_file(path: Path | str, size: int = 4096) -> str:
    Path(path).write_bytes(bytes(size))
    return str(path)


def qcow2_chain(
    directory: Path, *names: str, base_raw: bool = False, version: int = 2, cluster_bits: int = 16
) -> dict[str, str]:
    """``names[0] <- names[1] <- ...``: each image records the one before it by absolute path,
    with its format; the first is a qcow2 without backing (a raw file with ``base_raw``)."""
    paths: dict[str, str] = {}
    below: tuple[str, str] | None = None
    for position, name in enumerate(names):
        path = directory / name
        if position == 0 and base_raw:
            paths[name] = raw_file(path)
            below = (paths[name], "raw")
            continue
        backing, fmt = below if below is not None else (None, None)
        paths[name] = qcow2_file(path, backing, fmt, version=version, cluster_bits=cluster_bits)
        below = (paths[name], "qcow2")
    return paths


def disk(
    path: str | None, target: str = "vda", fmt: str | None = "qcow2", **more: Any
) -> DiskConfig:
    return DiskConfig(target=target, path=path, format=fmt, **more)


def run(hv: Hypervisor, name: str, *disks: DiskConfig) -> None:
    """Defines and starts a persistent domain; fails the test if either is refused."""
    assert hv.define(name, list(disks)).ok
    outcome = hv.start(name)
    assert outcome.ok, outcome


def complete(hv: Hypervisor, name: str, target: str = "vda") -> None:
    """qemu finishes the disk's job and libvirt handles every pending event."""
    assert hv.job_step(name, target).ok
    hv.deliver_all()


def pivot(hv: Hypervisor, name: str, target: str = "vda") -> Outcome:
    """qemu makes the job READY, libvirt sees the event, the user pivots."""
    complete(hv, name, target)
    return hv.block_job_pivot(name, target)


def files(chain: Chain | None) -> list[str] | None:
    """The chain's file names, top first."""
    return None if chain is None else [layer.filename for layer in chain.layers]


def shape(chain: Chain | None) -> tuple[tuple[tuple[str, str], ...], bool] | None:
    """The chain's (file, format) pairs and whether it is terminated."""
    if chain is None:
        return None
    return tuple((layer.filename, layer.format) for layer in chain.layers), chain.terminated


def indexes(chain: Chain | None) -> list[int]:
    assert chain is not None
    return [layer.index for layer in chain.layers]


def disk_state(hv: Hypervisor, name: str, target: str = "vda") -> Any:
    """The live disk of a running domain (fails the test if there is none)."""
    domain = hv.domains[name]
    live = domain.live_disk(target)
    assert live is not None
    return live
