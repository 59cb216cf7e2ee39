"""``chainsuite study``: its counts follow from the cache rules, a seed fixes them, the
command writes its three files and never overwrites earlier results unasked.

The relations tested come from the rules each policy runs (simulator/profiles.py): the
no-cache baseline probes wherever any policy does; the modelled chain is probed only when
a disk is started or attached, before qemu opens it; only PATCHv2, which does not re-probe
after a commit, can serve a chain that no longer matches the files; keeping the chain
across daemon restarts can only save probes, and only where the daemon restarted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conformance import study
from conformance.cli import main
from conformance.study_command import OUTPUTS
from simulator.hypervisor import DiskConfig, Hypervisor
from simulator.profiles import PROFILES
from simulator.workloads import MIX, Mix, Operation, Workload, generate, make_chain

SEED = 5
VMS = 8


@pytest.fixture(scope="module")
def result() -> study.StudyResult:
    return study.run_study(SEED, VMS)


def _labels(workload: Workload) -> list[str]:
    return [label for label, _ in workload.steps]


# -- the workload distribution --------------------------------------------------------------


def test_same_seed_draws_the_same_workloads_and_another_seed_others() -> None:
    first, again, other = generate(11, 20), generate(11, 20), generate(12, 20)
    assert [(w.name, w.depth, w.description, _labels(w)) for w in first] == [
        (w.name, w.depth, w.description, _labels(w)) for w in again
    ]
    assert [_labels(w) for w in first] != [_labels(w) for w in other]


def test_depths_span_1_to_200_and_the_chain_stays_within_them() -> None:
    workloads = generate(3, 300)
    depths = [workload.depth for workload in workloads]
    assert min(depths) == 1 and max(depths) > 150 and max(depths) <= 200
    for workload in workloads:
        layers, attached = workload.depth, 0
        for label in _labels(workload):
            if label == Operation.SNAPSHOT:
                assert layers < 200
                layers += 1
            elif label == Operation.COMMIT:
                assert layers >= 3
                layers -= 1
            elif label == Operation.PULL:
                assert layers >= 2
                layers = 1
            elif label == Operation.ATTACH:
                attached += 1
            elif label == Operation.DETACH:
                assert attached > 0
                attached -= 1
            elif label == Operation.STOP:
                attached = 0
            assert 1 <= layers <= 200


def test_every_boot_is_a_start_then_operations_then_a_stop() -> None:
    for workload in generate(4, 50):
        labels = _labels(workload)
        starts = [i for i, label in enumerate(labels) if label == Operation.START]
        stops = [i for i, label in enumerate(labels) if label == Operation.STOP]
        assert labels[0] == Operation.START and labels[-1] == Operation.STOP
        assert MIX.boots[0] <= len(starts) == len(stops) <= MIX.boots[1]
        assert all(start < stop for start, stop in zip(starts, stops, strict=True))


def test_a_mix_refuses_bounds_it_cannot_draw_from() -> None:
    with pytest.raises(ValueError):
        Mix(min_depth=0)
    with pytest.raises(ValueError):
        Mix(min_depth=10, max_depth=5)
    with pytest.raises(ValueError):
        Mix(boots=(0, 2))
    with pytest.raises(ValueError):
        Mix(weights=((Operation.SNAPSHOT, 0),))
    with pytest.raises(ValueError):
        Mix(weights=((Operation.STOP, 1),))


# -- the no-cache rule ----------------------------------------------------------------------


@pytest.mark.parametrize(("reuses_cache", "probes"), [(True, 1), (False, 2)])
def test_without_a_cache_a_block_job_probes_even_with_a_chain_cached(
    tmp_path: Path, reuses_cache: bool, probes: int
) -> None:
    landed = PROFILES["libvirt-1.0"]
    profile = replace(landed, cache=replace(landed.cache, reuses_cache=reuses_cache))
    hypervisor = Hypervisor(profile)
    hypervisor.define("vm", [DiskConfig("vda", make_chain(str(tmp_path), 3), "qcow2")])
    assert hypervisor.start("vm").ok
    assert hypervisor.chain("vm", "vda") is not None
    assert hypervisor.block_pull("vm", "vda").ok
    assert hypervisor.counters.probes == probes
    # The second probe reads the active layer, which qemu holds open for writing.
    assert hypervisor.counters.probes_of_open_files == probes - 1


# -- the counts follow from the rules -------------------------------------------------------


def test_every_policy_runs_the_same_operations_and_refuses_none(
    result: study.StudyResult,
) -> None:
    expected = sum(len(workload.steps) for workload in result.workloads)
    assert result.results[0].policy.key == study.BASELINE
    for policy in result.results:
        assert policy.total.operations == expected
        assert policy.total.refused == 0, policy.policy.key


def test_no_cache_probes_at_least_as_often_as_any_cached_policy(
    result: study.StudyResult,
) -> None:
    base = result.baseline
    for policy in result.results:
        for vm, (mine, theirs) in enumerate(zip(policy.by_vm, base.by_vm, strict=True)):
            assert mine.probes <= theirs.probes, (policy.policy.key, vm)
            assert mine.probes_of_open_files <= theirs.probes_of_open_files
    assert base.total.probes > result.policy("libvirt-1.0").total.probes


def test_the_modelled_chain_is_probed_only_at_start_and_attach_never_an_open_file(
    result: study.StudyResult,
) -> None:
    modern = result.policy("libvirt-modern")
    assert modern.total.probes_of_open_files == 0
    probed = {label for label, totals in modern.by_operation.items() if totals.probes}
    assert probed <= {Operation.START.value, Operation.ATTACH.value}
    starts = modern.by_operation[Operation.START.value].operations
    attaches = modern.by_operation[Operation.ATTACH.value].operations
    assert modern.total.probes == starts + attaches


def test_only_the_posted_patch_reads_a_stale_chain_and_only_in_a_block_job(
    result: study.StudyResult,
) -> None:
    for policy in result.results:
        if policy.policy.key != "seed-v2":
            assert policy.total.stale_operations == 0, policy.policy.key
    seed = result.policy("seed-v2")
    assert seed.total.stale_operations > 0
    stale = {label for label, totals in seed.by_operation.items() if totals.stale_operations}
    assert stale <= {Operation.COMMIT.value, Operation.PULL.value}


def test_keeping_the_chain_across_restarts_saves_probes_only_where_the_daemon_restarted(
    result: study.StudyResult,
) -> None:
    landed, kept = result.policy("libvirt-1.0"), result.policy("kept-in-status")
    for workload, mine, theirs in zip(result.workloads, kept.by_vm, landed.by_vm, strict=True):
        assert mine.probes <= theirs.probes
        if Operation.RESTART.value not in _labels(workload):
            assert mine.counts() == theirs.counts()


def test_no_probe_happens_outside_start_attach_and_block_jobs(result: study.StudyResult) -> None:
    quiet = {Operation.STOP, Operation.SNAPSHOT, Operation.DETACH, Operation.RESTART}
    for policy in result.results:
        for label in quiet:
            totals = policy.by_operation.get(label.value, study.Totals())
            assert totals.probes == 0, (policy.policy.key, label)


def test_the_same_seed_gives_the_same_numbers(result: study.StudyResult) -> None:
    again = study.run_study(SEED, VMS)

    def counts(run: study.StudyResult) -> list[object]:
        return [
            (
                policy.total.counts(),
                {label: totals.counts() for label, totals in policy.by_operation.items()},
                [vm.counts() for vm in policy.by_vm],
            )
            for policy in run.results
        ]

    assert counts(again) == counts(result)
    assert _without_time(json.loads(study.render_json(again))) == _without_time(
        json.loads(study.render_json(result))
    )


def _without_time(document: object) -> object:
    if isinstance(document, dict):
        return {k: _without_time(v) for k, v in document.items() if k != "prober-seconds"}
    if isinstance(document, list):
        return [_without_time(item) for item in document]
    return document


# -- the outputs ----------------------------------------------------------------------------


def test_markdown_has_a_summary_and_a_table_per_policy(result: study.StudyResult) -> None:
    text = study.render_markdown(result)
    assert f"`chainsuite study --seed {SEED} --vms {VMS}`" in text
    for policy in result.results:
        assert f"## {policy.policy.label}\n" in text
    assert text.count("| **total** |") == len(result.results)
    summary = study.summary(result).splitlines()
    assert len(summary) == 2 + len(result.results)
    assert summary[2].split(" | ")[3] == "1.00x"  # the baseline against itself


def test_json_holds_the_seed_the_parameters_and_the_raw_numbers(
    result: study.StudyResult,
) -> None:
    document = json.loads(study.render_json(result))
    assert document["seed"] == SEED and document["vms"] == VMS
    assert document["workload-parameters"]["depth"]["max"] == 200
    assert len(document["workloads"]) == VMS
    policies = {policy["key"]: policy for policy in document["policies"]}
    assert policies.keys() == {policy.policy.key for policy in result.results}
    for key, policy in policies.items():
        per_vm = sum(vm["by-policy"][key]["probes"] for vm in document["workloads"])
        per_op = sum(op["probes"] for op in policy["by-operation"].values())
        assert policy["total"]["probes"] == per_vm == per_op


def _study(out: Path, *extra: str) -> int:
    return main(["study", "--out", str(out), "--seed", "2", "--vms", "2", "--quiet", *extra])


def test_the_command_writes_three_files_and_refuses_to_overwrite_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert _study(out) == 0
    assert (out / "study.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    document = json.loads((out / "study.json").read_text())
    assert (document["seed"], document["vms"]) == (2, 2)
    assert (out / "study.md").read_text().startswith("# Cache-policy study")
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    capsys.readouterr()

    assert _study(out) == 1
    error = capsys.readouterr().err
    assert "--force" in error and len(error.splitlines()) == 1
    assert {name: (out / name).read_bytes() for name in before} == before

    assert _study(out, "--force") == 0


def test_without_matplotlib_the_plot_is_skipped_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert _study(tmp_path) == 0
    error = capsys.readouterr().err.splitlines()
    assert [line for line in error if "png" in line] == [
        "study: study.png skipped: matplotlib is not installed "
        "(pip install 'chainsuite[study]' to get it)"
    ]
    assert (tmp_path / "study.md").exists() and (tmp_path / "study.json").exists()
    assert not (tmp_path / "study.png").exists()


def test_progress_goes_to_stderr_and_the_summary_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["study", "--out", str(tmp_path), "--seed", "2", "--vms", "2"]) == 0
    captured = capsys.readouterr()
    assert "study: [1/2] vm-1:" in captured.err and "study: [2/2] vm-2:" in captured.err
    assert "| no cache (1.0 rules, every caller probes) |" in captured.out


@pytest.mark.parametrize("vms", ["0", "-3"])
def test_a_study_of_no_vms_is_a_usage_error(
    tmp_path: Path, vms: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["study", "--out", str(tmp_path / "x"), "--vms", vms]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
