"""The seed (PATCHv2 12/16 and Laine Stump's review) against the simulated hypervisor.

Expected values are read off the C code: the posted ``qemuDomainDetermineDiskChain`` of
seed/000_4f70b555edc3b004.txt and the landed one of libvirt-rules.md §1.2; S1 is §5.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from simulator.hypervisor import DiskConfig, Domain, Hypervisor, LiveDisk, OpError, Outcome
from simulator.model import Chain, ErrorCode, Layer
from simulator.profiles import LIBVIRT_1_0, SEED_V2, Profile
from tests.simulator.hv_helpers import (
    PROFILES_2012,
    complete,
    disk,
    files,
    qcow2_chain,
    qcow2_file,
    run,
    with_cache_rules,
)

OLD_CHAIN = Chain((Layer("/cached/before", "qcow2"),), True)
"""A chain cached earlier; no file has this name, so keeping it shows nothing was probed."""

Combination = tuple[bool, bool, bool, bool]
COMBINATIONS: list[Combination] = [
    (source, cached, force, ok)
    for source, cached, force, ok in itertools.product([True, False], repeat=4)
]
"""(disk has a source, chain cached, force, probe succeeds)."""
Expected = tuple[int, str]
"""The return code, and the cache afterwards: 'unchanged', 'probed' or 'empty'."""


def seed_v2_expected(has_source: bool, cached: bool, force: bool, probe_ok: bool) -> Expected:
    """PATCHv2: ``if (!disk->chain && !force) return -1; return 0;``."""
    if not has_source:
        return 0, "unchanged"
    if cached and not force:
        return 0, "unchanged"
    if probe_ok:
        return 0, "probed"
    return (0 if force else -1), "empty"


def landed_expected(has_source: bool, cached: bool, force: bool, probe_ok: bool) -> Expected:
    """libvirt 1.0 (§1.2 point 3): ``if (!disk->backingChain) return -1; return 0;``."""
    if not has_source:
        return 0, "unchanged"
    if cached and not force:
        return 0, "unchanged"
    if probe_ok:
        return 0, "probed"
    return -1, "empty"


EXPECTED = {SEED_V2.name: seed_v2_expected, LIBVIRT_1_0.name: landed_expected}


def determine(
    profile: Profile, tmp_path: Path, combination: Combination
) -> tuple[Outcome, Chain | None, dict[str, str], int]:
    """Runs determine_disk_chain once on a fresh disk: its outcome, the cache afterwards,
    the image paths and how many probes it made."""
    has_source, cached, force, probe_ok = combination
    paths = qcow2_chain(tmp_path, "base.qcow2", "top.qcow2")
    if not probe_ok:
        os.unlink(paths["base.qcow2"])  # top's recorded backing is gone: the walk fails
    config = DiskConfig("vda", paths["top.qcow2"] if has_source else None, "qcow2")
    hv = Hypervisor(profile)
    live = LiveDisk(config, chain=OLD_CHAIN if cached else None)
    outcome = hv.determine_disk_chain(Domain("d", True, [config]), live, force)
    return outcome, live.chain, paths, hv.counters.probes


@pytest.mark.parametrize("profile", PROFILES_2012)
@pytest.mark.parametrize(
    "combination", COMBINATIONS, ids=lambda c: "src{:d}-cached{:d}-force{:d}-ok{:d}".format(*c)
)
def test_truth_table(profile, combination, tmp_path):
    """The return code and the cache afterwards for each input of the function."""
    outcome, chain, paths, probes = determine(profile, tmp_path.resolve(), combination)
    rc, cache = EXPECTED[profile.name](*combination)
    assert outcome.rc == rc
    if cache == "unchanged":
        assert chain is (OLD_CHAIN if combination[1] else None)
        assert probes == 0
    elif cache == "probed":
        assert files(chain) == [paths["top.qcow2"], paths["base.qcow2"]]
    else:
        assert chain is None  # a failure is never cached, forced or not
        assert probes == 1


def test_truth_tables_differ_exactly_on_a_failed_forced_probe(tmp_path):
    """Laine Stump's question: v2 returned 0 for a forced probe that failed; 1.0 returns -1.
    Both leave the cache empty."""
    differing = []
    for number, combination in enumerate(COMBINATIONS):
        results = {}
        for profile in (SEED_V2, LIBVIRT_1_0):
            directory = tmp_path.resolve() / f"{profile.name}-{number}"
            directory.mkdir()
            outcome, chain, _, _ = determine(profile, directory, combination)
            names = None if chain is None else [os.path.basename(f) for f in files(chain) or ()]
            results[profile.name] = (outcome.rc, names)
        if results[SEED_V2.name] != results[LIBVIRT_1_0.name]:
            differing.append((combination, results))
    assert [combination for combination, _ in differing] == [
        (True, True, True, False),
        (True, False, True, False),
    ]
    for _, results in differing:
        assert results[SEED_V2.name] == (0, None)
        assert results[LIBVIRT_1_0.name] == (-1, None)


# --------------------------------------------------------------------------- Laine: the stop loop


def observe_destroy(profile: Profile, paths: dict[str, str], persistent: bool) -> dict[str, Any]:
    """Everything destroy leaves that an API caller could see."""
    hv = Hypervisor(profile)
    vda = disk(paths["top.qcow2"])
    vdb = disk(paths["other.qcow2"], "vdb")
    if persistent:
        run(hv, "guest", vda)
    else:
        assert hv.create("guest", [vda]).ok
    assert hv.attach("guest", vdb).ok
    assert hv.destroy("guest").ok
    domain = hv.domains.get("guest")
    return {
        "present": domain is not None,
        "running": domain.running if domain else None,
        "config": list(domain.config) if domain else None,
        "chains": [hv.chain("guest", target) for target in ("vda", "vdb")],
        "granted": {name: set(paths) for name, paths in hv.granted.items()},
        "counters": hv.counters,
        "jobs": dict(hv.jobs),
        "events": list(hv.events.pending),
    }


@pytest.mark.parametrize("profile", PROFILES_2012)
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "transient"])
def test_stop_loop_is_redundant(profile, persistent, tmp_path):
    """Laine Stump: qemuProcessStop frees vm->def anyway (a transient domain goes with it),
    so PATCHv2's loop changes nothing anyone can observe; 1.0 dropped it (§1.2 point 4)."""
    tmp = tmp_path.resolve()
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    paths.update(qcow2_chain(tmp, "other.qcow2"))
    with_loop = observe_destroy(with_cache_rules(profile, stop_loop=True), paths, persistent)
    without = observe_destroy(with_cache_rules(profile, stop_loop=False), paths, persistent)
    assert with_loop == without
    assert with_loop["present"] is persistent
    assert with_loop["chains"] == [None, None]


# --------------------------------------------------------------------------- S1


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s1_failed_forced_reprobe_after_pull_then_real_error(profile, tmp_path):
    """S1: base is deleted under a pull; the completion handler's forced re-probe fails (its
    return is ignored) and empties the cache; block commit then probes again and fails with
    the real error, never a cached failure."""
    paths = qcow2_chain(tmp_path.resolve(), "base.qcow2", "mid.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    assert hv.block_pull("guest", "vda", base=paths["base.qcow2"]).ok
    assert hv.delete_file(paths["base.qcow2"]).ok
    probes = hv.counters.probes
    complete(hv, "guest", "vda")  # qemuProcessHandleBlockJob: DetermineDiskChain(force=true)
    assert hv.counters.probes == probes + 1
    assert hv.chain("guest", "vda") is None
    assert hv.domains["guest"].running

    failed = hv.counters.failed_probes
    outcome = hv.block_commit("guest", "vda", top=paths["mid.qcow2"])
    assert outcome.rc == -1
    assert outcome.code == ErrorCode.BACKING_MISSING
    assert paths["base.qcow2"] in (outcome.message or "")
    assert hv.counters.failed_probes == failed + 1  # it probed: nothing was cached
    assert hv.chain("guest", "vda") is None


@pytest.mark.parametrize("profile", PROFILES_2012)
def test_s1_failure_is_not_cached_once_the_file_returns(profile, tmp_path):
    """S1: after a failed forced re-detect the next non-forced caller probes the files as they
    are now; when the backing is back it succeeds."""
    tmp = tmp_path.resolve()
    paths = qcow2_chain(tmp, "base.qcow2", "top.qcow2")
    hv = Hypervisor(profile)
    run(hv, "guest", disk(paths["top.qcow2"]))
    domain = hv.domains["guest"]
    live = domain.live_disk("vda")
    assert live is not None
    assert hv.delete_file(paths["base.qcow2"]).ok
    outcome = hv.determine_disk_chain(domain, live, True)
    assert outcome.rc == profile.cache.forced_failure_rc
    assert outcome.rc == (0 if profile is SEED_V2 else -1)
    assert live.chain is None

    second = hv.determine_disk_chain(domain, live, False)
    assert second.rc == -1 and second.code == ErrorCode.BACKING_MISSING

    qcow2_file(paths["base.qcow2"])
    third = hv.block_commit("guest", "vda", top=paths["top.qcow2"], active=True)
    assert third.code == OpError.UNSUPPORTED  # 2012: no active commit, but the chain is known
    assert files(hv.chain("guest", "vda")) == [paths["top.qcow2"], paths["base.qcow2"]]
