"""The mutants of the reference: each is a real defect a named case catches, the reference
stays intact around them, and ``chainsuite mutants`` prints the score."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import conformance.adapters.reference as reference_adapter
import simulator.backing as backing_names
from conformance import mutants_command
from conformance.adapters.base import AdapterError
from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import Case, load
from conformance.cli import main
from conformance.mutants import (
    CACHE_PROFILES,
    MUTANTS,
    WATCHDOG,
    Kill,
    KillKind,
    Mutant,
    MutantAdapter,
    MutantResult,
    Patch,
    Realisation,
    applied,
    get_mutant,
    open_mutant,
    score,
)
from conformance.runner import Runner, Status
from simulator.hypervisor import Hypervisor, Outcome
from simulator.prober import _LibvirtWalk

KILLED_BY: dict[tuple[str, str], str] = {
    ("network-disk-name-opened-as-file", "libvirt-modern"): (
        "lifecycle.hotplug.s2-network-disk-attach"
    ),
    ("chain-needs-cgroup-devices", "libvirt-modern"): "lifecycle.start-stop.start-detects-chain",
    ("stale-definition-chain-at-start", "libvirt-modern"): (
        "lifecycle.start-stop.stop-start-redetects"
    ),
    ("stale-definition-chain-at-start", "libvirt-1.0"): "lifecycle.start-stop.stop-start-redetects",
    ("pivot-keeps-old-top-index", "libvirt-modern"): (
        "lifecycle.block-commit.s20-active-commit-pivot"
    ),
    ("full-pull-leaves-chain-unterminated", "libvirt-modern"): "lifecycle.block-pull.s18-full-pull",
    ("forced-reprobe-failure-returns-0", "libvirt-1.0"): "lifecycle.seed.cached-forced-probe-fails",
    ("no-reprobe-after-pull", "seed-v2"): "lifecycle.seed.s1-pull-completion-reprobe-fails",
    ("no-reprobe-after-pull", "libvirt-1.0"): "lifecycle.seed.s1-pull-completion-reprobe-fails",
    ("no-reprobe-after-commit", "libvirt-1.0"): "lifecycle.seed.s1-commit-completion-reprobe",
    ("snapshot-leaves-cached-chain", "seed-v2"): "lifecycle.snapshot.s15-external-snapshot",
    ("snapshot-leaves-cached-chain", "libvirt-1.0"): "lifecycle.snapshot.s15-external-snapshot",
    ("snapshot-leaves-cached-chain", "libvirt-modern"): "lifecycle.snapshot.s15-external-snapshot",
    ("snapshot-redetects-chain", "libvirt-modern"): (
        "lifecycle.snapshot.s16-reuse-overlay-wrong-backing"
    ),
    ("reuse-snapshot-relative-name-not-loaded", "libvirt-modern"): (
        "lifecycle.snapshot.s16-reuse-overlay-relative-name"
    ),
    ("chain-lost-on-daemon-restart", "libvirt-modern"): "lifecycle.restart.s25-chain-kept-or-lost",
    ("reconnect-reprobes-chains", "libvirt-modern"): "lifecycle.restart.s25-chain-kept-or-lost",
    ("media-change-keeps-old-chain", "libvirt-modern"): "lifecycle.hotplug.change-media",
    ("user-terminator-not-parsed", "libvirt-modern"): (
        "lifecycle.start-stop.s29-user-chain-terminated"
    ),
    ("restart-terminates-unknown-chains", "libvirt-modern"): (
        "lifecycle.start-stop.s30-nbd-backing-unterminated"
    ),
    ("reconnect-kills-domain-with-broken-chain", "libvirt-modern"): (
        "lifecycle.restart.s25-backing-deleted-while-down"
    ),
    ("job-finished-while-down-forgotten", "libvirt-modern"): (
        "lifecycle.restart.s26-pull-finished-while-down"
    ),
    ("qed-backing-not-probed", "libvirt-1.0"): "probe.formats.qed-unflagged-over-backed",
    ("missing-raw-disk-accepted", "libvirt-modern"): "lifecycle.start-stop.s5-raw-disk-missing",
    ("snapshot-leaves-definition", "seed-v2"): "lifecycle.snapshot.config-follows-overlay",
    ("snapshot-leaves-definition", "libvirt-1.0"): "lifecycle.snapshot.config-follows-overlay",
    ("snapshot-leaves-definition", "libvirt-modern"): "lifecycle.snapshot.config-follows-overlay",
    ("pivot-leaves-definition", "libvirt-modern"): (
        "lifecycle.block-commit.s20-config-rewritten-after-pivot"
    ),
    ("pull-base-ignored", "seed-v2"): "lifecycle.block-pull.s18-pull-with-base",
    ("pull-base-ignored", "libvirt-1.0"): "lifecycle.block-pull.s18-pull-with-base",
    ("pull-base-ignored", "libvirt-modern"): "lifecycle.block-pull.s18-pull-with-base",
    ("commit-shallow-not-checked", "seed-v2"): "lifecycle.block-commit.s19-validation",
    ("commit-shallow-not-checked", "libvirt-1.0"): "lifecycle.block-commit.s19-validation",
    ("commit-shallow-not-checked", "libvirt-modern"): "lifecycle.block-commit.s19-validation",
    ("commit-delete-flag-ignored", "libvirt-modern"): "lifecycle.block-commit.s19-delete-flag",
    ("failed-forced-reprobe-cached-as-success", "seed-v2"): (
        "lifecycle.seed.cached-forced-probe-fails"
    ),
    ("failed-forced-reprobe-cached-as-success", "libvirt-1.0"): (
        "lifecycle.seed.cached-forced-probe-fails"
    ),
    ("failed-forced-reprobe-cached-as-success", "libvirt-modern"): (
        "lifecycle.seed.cached-forced-probe-fails"
    ),
    ("force-ignored", "seed-v2"): "lifecycle.seed.cached-forced-probe-succeeds",
    ("force-ignored", "libvirt-1.0"): "lifecycle.seed.cached-forced-probe-succeeds",
    ("cache-never-reused", "libvirt-1.0"): "lifecycle.seed.cached-not-forced",
    ("non-backing-top-read", "libvirt-modern"): "lifecycle.start-stop.s5-raw-disk",
    ("loop-detection-missing", "libvirt-1.0"): "probe.virstoragetest.qcow2-qcow2_infinite-self",
    ("prober-without-depth-limit", "libvirt-modern"): (
        "probe.virstoragetest.qcow2-qcow2_infinite-self"
    ),
    ("alias-loop-missed", "libvirt-1.0"): "probe.loops.alias-dot-slash",
    ("relative-names-canonicalised", "libvirt-modern"): "probe.virstoragetest.qcow2-symlinks",
    ("relative-name-against-symlink-target", "libvirt-modern"): (
        "lifecycle.start-stop.s9-relative-backing-through-symlink"
    ),
    ("top-format-probed", "libvirt-modern"): (
        "lifecycle.start-stop.s3-unspecified-top-format-is-raw"
    ),
    ("format-probing-allowed", "libvirt-1.0"): (
        "lifecycle.start-stop.s3-unspecified-top-format-is-raw"
    ),
    ("unrecorded-backing-probed", "libvirt-modern"): (
        "lifecycle.start-stop.s7-unrecorded-format-over-backing"
    ),
    ("unrecorded-backing-taken-as-raw", "libvirt-modern"): (
        "lifecycle.start-stop.s7-unrecorded-format-leaf"
    ),
    ("recorded-backing-format-ignored", "libvirt-modern"): (
        "probe.crafted.raw-guest-qcow2-header-format-recorded"
    ),
    ("depth-limit-off-by-one", "libvirt-modern"): "lifecycle.snapshot.s11-refused-on-200-layers",
    ("prober-depth-limit-off-by-one", "libvirt-modern"): "probe.depth.201",
    ("snapshot-depth-ignores-new-layer", "libvirt-modern"): (
        "lifecycle.snapshot.s11-refused-on-200-layers"
    ),
    ("indexes-by-depth", "libvirt-modern"): "lifecycle.block-commit.index-addressing",
    ("backing-name-limit-off-by-one", "libvirt-modern"): "probe.crafted.qcow2-backing-name-1024",
    ("qcow2-v3-extensions-from-72", "libvirt-modern"): "probe.formats.qcow2-v3-chain",
    ("inline-credentials-followed", "libvirt-modern"): "probe.names.http-inline-credentials",
    ("network-backing-not-followed", "libvirt-modern"): (
        "probe.virstoragetest.qcow2-protocol-backing-nbd"
    ),
    ("json-backing-names-unparsed", "libvirt-modern"): "probe.names.json-file",
    ("recorded-none-format-taken-as-unrecorded", "libvirt-modern"): (
        "probe.regressions.recorded-none-backing-format"
    ),
    (
        "chains-without-terminator",
        "libvirt-modern",
    ): "lifecycle.block-commit.s19-top-has-no-backing",
    ("network-disk-chain-terminated", "libvirt-modern"): "lifecycle.hotplug.s2-network-disk-attach",
    ("format-detected-from-file-extension", "libvirt-modern"): (
        "probe.crafted.raw-guest-qcow2-header-format-probed"
    ),
    ("user-backing-store-ignored", "libvirt-modern"): (
        "lifecycle.start-stop.s29-user-chain-terminated"
    ),
    ("unplug-revokes-only-the-top", "libvirt-modern"): (
        "lifecycle.hotplug.detach-revokes-the-whole-chain"
    ),
}
"""For every mutant run, a case on its defect's subject that kills it."""

ROWS = [(mutant.id, profile) for mutant in MUTANTS for profile in mutant.profiles]


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of built chains for the session: each spec is made once."""
    return tmp_path_factory.mktemp("mutant-chains")


@cache
def _case(case_id: str) -> Case:
    return load().get(case_id)


def _run(adapter: ReferenceAdapter, profile: str, case: Case, cache_root: Path) -> Any:
    try:
        return Runner(adapter, profile, cache_root=cache_root).run(case)
    finally:
        adapter.close()


def _patched_attributes() -> list[tuple[Any, str, object]]:
    """Every attribute some mutant replaces, with what the reference has there now."""
    seen = {}
    for patch in (WATCHDOG, *(patch for mutant in MUTANTS for patch in mutant.patches)):
        seen[(id(patch.owner), patch.attribute)] = (
            patch.owner,
            patch.attribute,
            vars(patch.owner)[patch.attribute],
        )
    return list(seen.values())


def test_the_catalogue_has_at_least_25_mutants_each_with_provenance_and_profiles() -> None:
    assert len(MUTANTS) >= 25
    ids = [mutant.id for mutant in MUTANTS]
    assert len(set(ids)) == len(ids)
    for mutant in MUTANTS:
        assert mutant.defect and mutant.provenance, mutant.id
        assert mutant.profiles and set(mutant.profiles) <= set(CACHE_PROFILES), mutant.id
        assert mutant.rules is not None or mutant.patches, mutant.id
    kinds = {mutant.realisation for mutant in MUTANTS}
    assert kinds == {Realisation.RULE, Realisation.CODE, Realisation.RULE_AND_HOST}


def test_every_run_has_a_named_killer() -> None:
    assert set(KILLED_BY) == set(ROWS)


@pytest.mark.qemu_img
@pytest.mark.parametrize(("mutant_id", "profile"), sorted(KILLED_BY))
def test_the_named_case_kills_the_mutant_and_the_reference_passes_it(
    mutant_id: str, profile: str, image_cache: Path
) -> None:
    case = _case(KILLED_BY[(mutant_id, profile)])
    against_reference = _run(ReferenceAdapter(profile), profile, case, image_cache)
    assert against_reference.status is Status.PASSED, against_reference.message
    against_mutant = _run(MutantAdapter(get_mutant(mutant_id), profile), profile, case, image_cache)
    assert against_mutant.status in (Status.FAILED, Status.ERROR)
    assert against_mutant.message


@pytest.mark.qemu_img
def test_the_reference_is_intact_after_mutant_runs(image_cache: Path) -> None:
    before = _patched_attributes()
    for mutant_id, case_id in (
        ("loop-detection-missing", "probe.virstoragetest.qcow2-qcow2_infinite-self"),
        ("snapshot-leaves-cached-chain", "lifecycle.snapshot.s15-external-snapshot"),
        ("user-terminator-not-parsed", "lifecycle.start-stop.s29-user-chain-terminated"),
    ):
        mutant = get_mutant(mutant_id)
        _run(
            MutantAdapter(mutant, mutant.profiles[0]),
            mutant.profiles[0],
            _case(case_id),
            image_cache,
        )
    after = _patched_attributes()
    for (owner, attribute, original), (_, _, now) in zip(before, after, strict=True):
        assert now is original, f"{owner.__name__}.{attribute} was left patched"
    case = _case("lifecycle.snapshot.s15-external-snapshot")
    assert _run(ReferenceAdapter("libvirt-modern"), "libvirt-modern", case, image_cache).status is (
        Status.PASSED
    )


def test_applied_puts_back_the_originals_also_after_an_exception() -> None:
    class Owner:
        kept = "original"

    def boom() -> None:
        raise RuntimeError("inside")

    patches = (Patch(Owner, "kept", "replaced"), Patch(Owner, "added", "new"))
    with pytest.raises(RuntimeError), applied(patches):
        assert Owner.kept == "replaced"
        assert Owner.added == "new"  # type: ignore[attr-defined]
        boom()
    assert Owner.kept == "original"
    assert "added" not in vars(Owner)


def test_a_mutant_is_in_place_only_while_it_answers(tmp_path: Path) -> None:
    """An oracle in the same process (the explorer's) sees the reference between calls."""
    seen: list[Hypervisor] = []

    def restart_spy(self: Hypervisor) -> Outcome:
        seen.append(self)
        return Outcome(-1, "spied", "the mutant answered")

    spy = Patch(Hypervisor, "daemon_restart", restart_spy)
    adapter = MutantAdapter(Mutant("spy", "answers", "tests", ("libvirt-modern",), patches=(spy,)))
    oracle = ReferenceAdapter("libvirt-modern")
    adapter.begin_case(tmp_path)
    oracle.begin_case(tmp_path)
    original = vars(Hypervisor)["daemon_restart"]
    assert adapter.call("daemon-restart", {})["error"]["code"] == "spied"
    assert vars(Hypervisor)["daemon_restart"] is original
    assert oracle.call("daemon-restart", {}) == {"rc": 0}
    assert seen == [adapter.hypervisor]


def test_a_mutant_that_raises_is_reported_as_a_crash(tmp_path: Path) -> None:
    def broken(self: Hypervisor) -> Outcome:
        raise KeyError("vda")

    mutant = Mutant(
        "broken", "raises", "tests", ("libvirt-modern",),
        patches=(Patch(Hypervisor, "daemon_restart", broken),),
    )  # fmt: skip
    adapter = MutantAdapter(mutant)
    adapter.begin_case(tmp_path)
    with pytest.raises(AdapterError, match="crashed: KeyError"):
        adapter.call("daemon-restart", {})


@pytest.mark.qemu_img
def test_a_walk_that_never_ends_is_reported_as_a_hang(image_cache: Path) -> None:
    case = _case("lifecycle.start-stop.s10-self-loop")
    result = _run(
        MutantAdapter(get_mutant("loop-detection-missing"), "libvirt-1.0"),
        "libvirt-1.0",
        case,
        image_cache,
    )
    assert result.status is Status.ERROR
    assert "hung" in result.message and "still going after" in result.message


def test_a_mutant_presents_itself_as_its_base_profile() -> None:
    adapter = open_mutant("chain-needs-cgroup-devices:libvirt-modern")
    reference = ReferenceAdapter("libvirt-modern")
    assert adapter.info.profile == "libvirt-modern"
    assert adapter.info.capabilities == reference.info.capabilities
    assert (adapter.info.name, adapter.info.version) == ("mutant", "chain-needs-cgroup-devices")
    assert adapter.profile.cache.chain_needs_cgroup_devices
    assert not adapter.hypervisor.cgroup_devices
    assert not reference.profile.cache.chain_needs_cgroup_devices


def test_open_mutant_refuses_unknown_mutants_and_foreign_profiles() -> None:
    with pytest.raises(AdapterError, match="no mutant 'nope'"):
        open_mutant("nope")
    with pytest.raises(AdapterError, match="applies to libvirt-modern, not 'seed-v2'"):
        open_mutant("top-format-probed:seed-v2")


def test_patched_names_exist_in_the_reference() -> None:
    for owner, attribute in (
        (Hypervisor, "_determine_modern"),
        (_LibvirtWalk, "_backing_format"),
        (backing_names, "resolve_relative_libvirt"),
        (reference_adapter, "_disk"),
    ):
        assert attribute in vars(owner)


@pytest.mark.qemu_img
def test_score_stops_at_the_first_killer_unless_asked_for_every_case(image_cache: Path) -> None:
    mutant = get_mutant("no-reprobe-after-commit")
    cases = [
        _case("lifecycle.start-stop.start-detects-chain"),
        _case("lifecycle.seed.s1-commit-completion-reprobe"),
        _case("lifecycle.block-commit.s19-intermediate-commit"),
    ]
    first = score(mutant, "libvirt-1.0", cases, cache_root=image_cache)
    assert first.kill == Kill(KillKind.CASE, cases[1].id, first.kill.detail if first.kill else "")
    assert (first.cases_run, first.killing_cases) == (2, (cases[1].id,))
    every = score(mutant, "libvirt-1.0", cases, every_case=True, cache_root=image_cache)
    assert every.killing_cases == (cases[1].id, cases[2].id)
    assert every.cases_run == 3


def test_the_cli_lists_the_mutants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mutants", "--list"]) == 0
    out = capsys.readouterr().out
    for mutant in MUTANTS:
        assert mutant.id in out


@pytest.mark.qemu_img
def test_the_cli_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "mutants.json"
    argv = ["mutants", "--profile", "libvirt-modern", "-m", "top-format-probed", "-m"]
    argv += ["unplug-revokes-only-the-top", "--json", str(report)]
    assert main(argv) == 0  # both killed
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["MUTANT", "PROFILE", "RESULT", "KILLED", "BY"]
    killed = next(line for line in lines if line.startswith("top-format-probed"))
    assert killed.split()[1:4] == [
        "libvirt-modern",
        "killed",
        "lifecycle.start-stop.s3-unspecified-top-format-is-raw",
    ]
    unplug = next(line for line in lines if line.startswith("unplug-revokes-only-the-top"))
    assert unplug.split()[1:4] == [
        "libvirt-modern",
        "killed",
        "lifecycle.hotplug.detach-revokes-the-whole-chain",
    ]
    assert lines[-1].startswith("2 of 2 mutant runs killed (100.0%): 2 by catalogue cases")
    assert "[1/2] top-format-probed (libvirt-modern): killed by" in captured.err
    document = json.loads(report.read_text())
    assert document["summary"]["killed"] == 2 and document["summary"]["runs"] == 2
    first = document["results"][0]
    assert first["killed_by"]["by"] == "lifecycle.start-stop.s3-unspecified-top-format-is-raw"
    assert first["realisation"] == "code"


def test_the_cli_refuses_unknown_mutants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mutants", "-m", "nope"]) == 2
    assert "no mutant nope" in capsys.readouterr().err


def _survivor() -> MutantResult:
    return MutantResult(get_mutant("unplug-revokes-only-the-top"), "libvirt-modern", None, (), 3)


def test_explore_says_so_in_one_line_when_the_explorer_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mutants_command, "_explorer", lambda: None)
    said: list[str] = []
    results = mutants_command._explore_survivors([_survivor()], 5, 0, None, said.append)
    assert said == ["mutants: conformance.explore is not there yet; --explore skipped"]
    assert not results[0].killed


def test_explore_turns_a_finding_into_a_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class Finding:
        steps = ({"op": "define"}, {"op": "start"})
        problem = "expected chain [a], got none"

    class Result:
        finding = Finding()

    def fake_explore(impl: Any, oracle: Any, **options: Any) -> Result:
        calls.append({"impl": impl.info.version, "oracle": oracle.info.name, **options})
        return Result()

    monkeypatch.setattr(mutants_command, "_explorer", lambda: fake_explore)
    said: list[str] = []
    results = mutants_command._explore_survivors([_survivor()], 7, 3, None, said.append)
    assert calls == [
        {
            "impl": "unplug-revokes-only-the-top",
            "oracle": "reference",
            "max_examples": 7,
            "seed": 3,
            "out_dir": None,
        }
    ]
    kill = results[0].kill
    assert kill == Kill(
        KillKind.EXPLORATION, "explored sequence of 2 steps", "expected chain [a], got none"
    )
    assert "explored sequence of 2 steps" in mutants_command.table(results)
    assert mutants_command.summary_line(results).endswith(
        "1 by exploration; 0 survived (1 mutants)"
    )
