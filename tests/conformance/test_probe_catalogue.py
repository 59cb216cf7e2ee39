"""The probe catalogue (every ``probe.*`` case) against the reference, under each profile.

Every probe case runs on ReferenceAdapter(profile) judged by Runner(adapter, profile) for the
four profiles. The expectations in the case files come from libvirt-rules.md (§3 prober
rules, §4.1 virstoragetest) and image-formats.md (§1, §2, §6), and for the qemu profile they
were checked against the real ``qemu-img info --backing-chain --output=json`` (7.2.22) on the
same images, not taken from the reference. Where the reference disagrees with a rule the
case states, the pair is a strict xfail below with the reason and a diagnosis, so that a fix
of the reference shows up as an XPASS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.adapters.reference import ReferenceAdapter
from conformance.catalogue import Case, load
from conformance.runner import Runner, Status
from images import craft

PROFILES = ("seed-v2", "libvirt-1.0", "libvirt-modern", "qemu")
MINIMUM_CASES = 60

VIRSTORAGETEST_CHAIN_CASES = frozenset(
    {
        "missing", "raw-raw", "raw-auto", "qcow2-qcow2_raw-raw-relative",
        "qcow2-auto_raw-raw-relative", "qcow2-qcow2_qcow2-qcow2_raw-raw",
        "qcow2-auto_qcow2-qcow2_raw-raw", "qcow2-qcow2_qcow2-qcow2_qcow2-auto",
        "qcow2-qcow2_qcow2-qcow2_raw-auto", "qcow2-qcow2_qcow2-auto_qcow2-auto",
        "qcow2-qcow2_qcow2-auto", "qcow2-protocol-backing-file", "qcow2-protocol-backing-nbd",
        "qcow2-qcow2_missing", "qcow2-qcow2_nbd-raw", "qed-qed_raw", "qed-auto_raw",
        "directory-raw", "directory-none", "directory-dir", "qcow2-symlinks",
        "qcow2-qcow2_infinite-self", "qcow2-qcow2_infinite-mutual",
    }
)  # fmt: skip
"""The TEST_CHAIN cases of tests/virstoragetest.c (libvirt-rules.md §4.1 table)."""

KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}
"""(case id, profile) pairs where the reference disagrees with the rule the case states."""


def probe_cases() -> list[Case]:
    """Every probe case of the catalogue (all files validated by the schema on loading)."""
    return [case for case in load().cases if case.kind == "probe"]


CASES = probe_cases()


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        for profile in PROFILES:
            marks = []
            reason = KNOWN_DISAGREEMENTS.get((case.id, profile))
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(case, profile, id=f"{case.id}-{profile}", marks=marks))
    return params


@pytest.fixture(scope="session")
def probe_image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of built chains for the session: each spec is made once."""
    return tmp_path_factory.mktemp("probe-chains")


def test_catalogue_has_enough_probe_cases() -> None:
    assert len(CASES) >= MINIMUM_CASES
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids)


def test_probe_cases_are_well_formed() -> None:
    """Ids read probe.<area>.<name>; every step probes and states an outcome per profile."""
    for case in CASES:
        assert len(case.id.split(".")) >= 3, case.id
        assert case.provenance, case.id
        for step in case.steps:
            assert step["op"] == "probe", case.id
            assert "default" in step.get("expect", {}), case.id


def test_every_virstoragetest_chain_case_is_covered() -> None:
    covered = {
        item["ref"]
        for case in CASES
        for item in case.provenance
        if item["kind"] == "virstoragetest"
    }
    assert covered >= VIRSTORAGETEST_CHAIN_CASES, VIRSTORAGETEST_CHAIN_CASES - covered


def test_every_crafted_recipe_is_probed() -> None:
    used = set()
    for case in CASES:
        for source in case.images:
            if "crafted" in source:
                used.add(source["crafted"])
            elif source.get("corpus", "").startswith("crafted/"):
                used.add(source["corpus"].split("/", 1)[1])
    assert set(craft.RECIPES) <= used, set(craft.RECIPES) - used


def test_known_disagreements_name_real_cases() -> None:
    ids = {case.id for case in CASES}
    assert {case_id for case_id, _ in KNOWN_DISAGREEMENTS} <= ids
    assert {profile for _, profile in KNOWN_DISAGREEMENTS} <= set(PROFILES)


@pytest.mark.qemu_img
@pytest.mark.parametrize(("case", "profile"), _params())
def test_probe_case_against_reference(case: Case, profile: str, probe_image_cache: Path) -> None:
    adapter = ReferenceAdapter(profile)
    try:
        result = Runner(adapter, profile, cache_root=probe_image_cache).run(case)
    finally:
        adapter.close()
    assert result.status is Status.PASSED, result.message
