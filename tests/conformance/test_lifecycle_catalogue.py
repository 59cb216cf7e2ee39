"""The lifecycle catalogue (conformance/cases/lifecycle) against the reference, per profile.

Every case runs on ReferenceAdapter(profile) judged by Runner(adapter, profile) for the three
profiles with a cache. The expectations in the case files come from libvirt-rules.md, the seed
and harnesses.md §0, not from the reference; where the reference disagrees with a rule the
case file states, the pair is a strict xfail below with the reason and a diagnosis, so that a
fix of the reference shows up as an XPASS.

A case that needs a capability the profile lacks (active commit and <backingStore> input are
modern only) is skipped with the runner's reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import CASES_DIR, Case, load_cases
from conformance.runner import Runner, Status

LIFECYCLE_DIR = CASES_DIR / "lifecycle"
PROFILES = ("seed-v2", "libvirt-1.0", "libvirt-modern")
MINIMUM_CASES = 40

KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}
"""(case id, profile) pairs where the reference disagrees with the rule the case states."""


def lifecycle_cases() -> list[Case]:
    """The cases of every file under cases/lifecycle, each file validated by the schema."""
    cases: list[Case] = []
    for path in sorted(LIFECYCLE_DIR.rglob("*.json")):
        source = str(path.relative_to(CASES_DIR))
        cases.extend(load_cases(json.loads(path.read_text()), source))
    return cases


CASES = lifecycle_cases()


def _params() -> list[Any]:
    params: list[Any] = []
    for case in CASES:
        for profile in PROFILES:
            marks = []
            reason = KNOWN_DISAGREEMENTS.get((case.id, profile))
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(case, profile, id=f"{case.id}-{profile}", marks=marks))
    return params


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of built chains for the session: each spec is made once."""
    return tmp_path_factory.mktemp("lifecycle-chains")


def test_catalogue_has_enough_lifecycle_cases() -> None:
    assert len(CASES) >= MINIMUM_CASES
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids)
    assert all(case.kind == "lifecycle" for case in CASES)


def test_every_operation_runs_under_every_profile() -> None:
    """Each lifecycle operation appears in a case no profile skips (active commit aside)."""
    unskipped = {
        step["op"]
        for case in CASES
        if not case.requires & {"active-commit", "user-backing-store"}
        for step in case.steps
    }
    lifecycle_ops = {
        "define", "create", "undefine", "start", "destroy", "attach", "detach", "change-media",
        "snapshot", "block-pull", "block-commit", "block-copy", "job-wait", "job-step",
        "deliver", "pivot", "abort", "daemon-restart", "chain", "determine-chain", "fault",
        "counters",
    }  # fmt: skip
    assert lifecycle_ops <= unskipped


def test_known_disagreements_name_real_cases() -> None:
    ids = {case.id for case in CASES}
    assert {case_id for case_id, _ in KNOWN_DISAGREEMENTS} <= ids


@pytest.mark.qemu_img
@pytest.mark.parametrize(("case", "profile"), _params())
def test_lifecycle_case_against_reference(case: Case, profile: str, image_cache: Path) -> None:
    adapter = ReferenceAdapter(profile)
    try:
        result = Runner(adapter, profile, cache_root=image_cache).run(case)
    finally:
        adapter.close()
    if result.status is Status.SKIPPED:
        pytest.skip(f"{profile}: {result.message}")
    assert result.status is Status.PASSED, result.message
