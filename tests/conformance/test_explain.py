"""``chainsuite explain``: the seed's edge cases, checked against the seed's own code.

Expected values are read off the C of seed/000_4f70b555edc3b004.txt (PATCHv2 12/16) and
the landed 4d34c92947e8 (libvirt-rules.md §1.2), not off the command's output:

- PATCHv2 ``qemuDomainDetermineDiskChain``: a cached chain and no force returns 0 at once;
  with force the chain is freed and probed again; then
  ``if (!disk->chain && !force) return -1; return 0;``.
- libvirt 1.0: the same, but ``if (!disk->backingChain) return -1;`` whatever force is.
- Both: the only forced caller, ``qemuProcessHandleBlockJob``, ignores the return value.
  PATCHv2 re-probes after a completed PULL only; 1.0 (patch 14/16) after PULL or COMMIT.
- Both: an external snapshot frees the chain; the chain lives only in memory, so a daemon
  restart loses it; it is gone once the guest stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from conformance.cli import main
from conformance.explain import (
    DEFAULT_PROFILES,
    EDGE_CASES,
    PROFILES_WITH_A_CACHE,
    Explanation,
    Op,
    StepExplanation,
    StepResult,
    edge_case,
    explain,
)

SEED_V2, LIBVIRT_1_0 = "seed-v2", "libvirt-1.0"
REPROBED_AFTER = {SEED_V2: {"pull"}, LIBVIRT_1_0: {"pull", "commit"}}
"""Completed jobs after which qemuProcessHandleBlockJob forces a re-probe."""


def seed_v2_returns(chain_cached: bool, force: bool, probe_ok: bool) -> int:
    if chain_cached and not force:
        return 0
    if not probe_ok and not force:
        return -1
    return 0


def landed_returns(chain_cached: bool, force: bool, probe_ok: bool) -> int:
    if chain_cached and not force:
        return 0
    return 0 if probe_ok else -1


RETURNS = {SEED_V2: seed_v2_returns, LIBVIRT_1_0: landed_returns}


@cache
def explained(name: str, profiles: tuple[str, ...] = DEFAULT_PROFILES) -> Explanation:
    return explain(edge_case(name), profiles)


def steps_of(explanation: Explanation, op: Op) -> list[StepExplanation]:
    return [step for step in explanation.steps if step.step.op is op]


def only(explanation: Explanation, op: Op) -> StepExplanation:
    found = steps_of(explanation, op)
    assert len(found) == 1, found
    return found[0]


def before(explanation: Explanation, step: StepExplanation, profile: str) -> StepResult:
    return explanation.step(step.number - 1).results[profile]


# --------------------------------------------------------------------------- the seed's case


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_failed_forced_reprobe_returns_what_each_version_says_and_caches_nothing(profile):
    explanation = explained("forced-reprobe")
    completion = only(explanation, Op.JOB_COMPLETE)
    result = completion.results[profile]
    assert result.events == ("pull completed",)
    [call] = result.chain_calls
    assert call.force
    assert call.result.rc == RETURNS[profile](chain_cached=True, force=True, probe_ok=False)
    assert call.result.rc == (0 if profile == SEED_V2 else -1)
    assert call.result.code == "backing-missing"  # reported in both, returned only by 1.0
    assert result.probes == 1
    assert result.cache is None  # the old chain was freed before the probe: nothing is kept


def test_the_handler_ignores_the_return_so_the_user_sees_the_same():
    explanation = explained("forced-reprobe")
    completion = only(explanation, Op.JOB_COMPLETE)
    assert not completion.profiles_agree
    assert completion.differences() == ["what qemuDomainDetermineDiskChain returns"]
    assert completion.users_see_the_same
    assert {result.result.rc for result in completion.results.values()} == {0}
    assert explanation.differing_steps() == [completion.number]
    assert "the user sees the same at every step" in explanation.verdict()


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_the_next_caller_probes_again_and_gets_the_real_error(profile):
    explanation = explained("forced-reprobe")
    commit = only(explanation, Op.BLOCK_COMMIT)
    assert before(explanation, commit, profile).cache is None
    result = commit.results[profile]
    [call] = result.chain_calls
    assert not call.force
    assert result.probes == 1  # an empty cache is probed: the failure was not remembered
    assert (result.result.rc, result.result.code) == (-1, "backing-missing")
    assert "base.qcow2" in (result.result.message or "")
    assert result.cache is None


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_the_pull_starts_from_the_cached_chain_without_probing(profile):
    pull = only(explained("forced-reprobe"), Op.BLOCK_PULL)
    result = pull.results[profile]
    assert result.result.rc == 0
    assert result.probes == 0
    assert result.cache == ("top.qcow2", "mid.qcow2", "base.qcow2")


# --------------------------------------------------------------------------- the truth table


def direct_calls() -> list[tuple[str, int]]:
    """Every direct qemuDomainDetermineDiskChain step of the catalogue of edge cases."""
    return [
        (case.name, number)
        for case in EDGE_CASES
        for number, step in enumerate(case.steps, start=1)
        if step.op is Op.DETERMINE
    ]


def test_the_direct_calls_cover_cached_and_empty_with_and_without_force():
    rows = set()
    for name, number in direct_calls():
        explanation = explained(name)
        step = explanation.step(number)
        cached = before(explanation, step, SEED_V2).cache is not None
        rows.add((cached, step.step.force))
    assert {(True, True), (False, True), (True, False), (False, False)} <= rows


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
@pytest.mark.parametrize(("name", "number"), direct_calls())
def test_direct_calls_follow_the_seed_code(profile, name, number):
    explanation = explained(name)
    step = explanation.step(number)
    cached = before(explanation, step, profile).cache is not None
    force = step.step.force
    result = step.results[profile]
    probe_ok = isinstance(result.files, tuple)  # what reading the files gives, uncounted
    assert result.result.rc == RETURNS[profile](cached, force, probe_ok)
    if cached and not force:
        assert result.probes == 0
        assert result.cache == before(explanation, step, profile).cache
    else:
        assert result.probes == 1
        assert (result.cache is not None) == probe_ok  # a failure is never cached


def test_cached_chain_not_forced_is_served_stale():
    explanation = explained("cached-not-forced")
    first = steps_of(explanation, Op.DETERMINE)[0]
    assert first.profiles_agree
    result = first.results[SEED_V2]
    assert result.cache == ("top.qcow2", "base.qcow2")
    assert result.files == "backing-missing"
    assert result.cache_matches_files is False


def test_empty_cache_not_forced_fails_in_both_and_forced_differs():
    explanation = explained("empty-cache-probe-fails")
    not_forced, forced = steps_of(explanation, Op.DETERMINE)
    assert not_forced.profiles_agree
    assert not_forced.results[SEED_V2].result.rc == -1
    assert {name: r.result.rc for name, r in forced.results.items()} == {
        SEED_V2: 0,
        LIBVIRT_1_0: -1,
    }


# --------------------------------------------------------------------------- the other callers


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_hotplug_of_a_broken_chain_is_refused(profile):
    attach = only(explained("hotplug-probe-fails"), Op.ATTACH)
    result = attach.results[profile]
    [call] = result.chain_calls
    assert (call.target, call.force) == ("vdb", False)
    assert (result.result.rc, result.result.code) == (-1, "backing-missing")
    assert result.disk.value == "not-attached"
    assert "agree on every step" in explained("hotplug-probe-fails").verdict()


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_commit_completion_is_reprobed_only_where_the_rules_say(profile):
    explanation = explained("commit-completion")
    completion = only(explanation, Op.JOB_COMPLETE)
    result = completion.results[profile]
    reprobed = "commit" in REPROBED_AFTER[profile]
    assert [call.force for call in result.chain_calls] == ([True] if reprobed else [])
    if reprobed:
        assert result.cache == ("top.qcow2", "base.qcow2")
        assert result.cache_matches_files
    else:
        assert result.cache == ("top.qcow2", "mid.qcow2", "base.qcow2")
        assert result.files == ("top.qcow2", "base.qcow2")
    pull = explanation.step(completion.number + 1).results[profile]
    # The next caller looks mid.qcow2 up in the cache: only the stale one still has it.
    assert pull.probes == 0
    assert pull.result.rc == (-1 if reprobed else 0)


def test_pull_completion_profiles_agree():
    explanation = explained("pull-completion")
    assert explanation.differing_steps() == []
    result = only(explanation, Op.JOB_COMPLETE).results[SEED_V2]
    assert [(call.force, call.result.rc) for call in result.chain_calls] == [(True, 0)]
    assert result.cache == ("top.qcow2", "base.qcow2")


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_snapshot_drops_the_cache_and_the_next_caller_probes(profile):
    explanation = explained("snapshot")
    assert only(explanation, Op.SNAPSHOT).results[profile].cache is None
    commit = only(explanation, Op.BLOCK_COMMIT).results[profile]
    assert commit.probes == 1
    assert commit.cache == ("snap.qcow2", "top.qcow2", "base.qcow2")


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_daemon_restart_loses_the_cache_and_the_pending_completion(profile):
    explanation = explained("daemon-restart")
    restart = only(explanation, Op.DAEMON_RESTART).results[profile]
    assert restart.cache is None
    assert restart.lost_events == 1
    pull = explanation.steps[-1].results[profile]
    assert pull.probes == 1
    assert pull.cache == ("top.qcow2", "base.qcow2")


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_stop_frees_the_cache_and_start_reads_the_files_as_they_are(profile):
    explanation = explained("stop-start")
    assert only(explanation, Op.STOP).results[profile].cache is None
    assert explanation.steps[-1].results[profile].cache == ("top.qcow2", "base.qcow2")
    assert explanation.differing_steps() == []


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_a_failure_is_not_remembered_once_the_base_returns(profile):
    explanation = explained("base-comes-back")
    last = explanation.steps[-1].results[profile]
    assert last.probes == 1
    assert last.result.rc == 0
    assert last.cache == ("top.qcow2", "base.qcow2")


def test_every_edge_case_runs_under_every_profile_with_a_cache():
    for case in EDGE_CASES:
        explanation = explained(case.name, PROFILES_WITH_A_CACHE)
        assert len(explanation.steps) == len(case.steps)
        assert all(step.results.keys() == set(PROFILES_WITH_A_CACHE) for step in explanation.steps)


def test_images_are_real_and_removed_afterwards(tmp_path):
    explanation = explain(edge_case("pull-completion"), DEFAULT_PROFILES, tmp_path)
    assert explanation.steps[0].results[SEED_V2].probes == 1
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the command


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_lists_the_edge_cases(capsys):
    status, out, err = run(capsys, "explain")
    assert (status, err) == (0, "")
    for case in EDGE_CASES:
        assert any(line.startswith(case.name + " ") for line in out.splitlines())
    status, out, _ = run(capsys, "explain", "--output", "json")
    assert [item["name"] for item in json.loads(out)] == [case.name for case in EDGE_CASES]


def test_cli_text_says_where_the_profiles_agree(capsys):
    status, out, err = run(capsys, "explain", "forced-reprobe")
    assert (status, err) == (0, "")
    assert "both agree:" in out
    assert "seed-v2 " in out and "libvirt-1.0 " in out
    assert "user sees: virsh blockpull --wait reports success" in out


def test_cli_json_is_the_explanation(capsys):
    status, out, err = run(capsys, "explain", "forced-reprobe", "--output", "json")
    assert (status, err) == (0, "")
    document = json.loads(out)
    assert document == json.loads(json.dumps(explained("forced-reprobe").to_json()))
    completion = next(step for step in document["steps"] if step["op"] == "job-complete")
    calls = {
        name: result["determine_disk_chain"][0]["rc"]
        for name, result in completion["results"].items()
    }
    assert calls == {SEED_V2: 0, LIBVIRT_1_0: -1}


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["explain", "no-such-case"], "unknown edge case 'no-such-case'"),
        (["explain", "forced-reprobe", "--profiles", "seed-v2,nope"], "unknown profile 'nope'"),
        (["explain", "forced-reprobe", "--profiles", "qemu"], "profile 'qemu' has no cache"),
        (["explain", "forced-reprobe", "--profiles", ","], "no profile given"),
    ],
)
def test_cli_bad_requests_are_one_line_and_exit_2(capsys, argv, said):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and said in err
    assert "Traceback" not in err


def test_console_script_runs_without_a_traceback():
    script = Path(sys.executable).with_name("chainsuite")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "conformance.cli"]
    done = subprocess.run(
        [*command, "explain", "commit-completion"], capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    assert b"differ at step" in done.stdout
