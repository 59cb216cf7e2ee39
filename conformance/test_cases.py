"""Every catalogue case as a pytest item (collected with ``pytest --pyargs conformance``)."""

from __future__ import annotations

import pytest

from conformance.adapters.base import Adapter
from conformance.catalogue import Case
from conformance.expectations import KnownFailure
from conformance.runner import Runner, Status


def test_case(
    chainsuite_case: Case,
    chainsuite_adapter: Adapter,
    chainsuite_expect_profile: str,
    chainsuite_known_failures: dict[str, KnownFailure],
    request: pytest.FixtureRequest,
) -> None:
    known = chainsuite_known_failures.get(chainsuite_case.id)
    if known is not None:
        request.applymarker(pytest.mark.xfail(reason=known.reason, strict=True))
    result = Runner(chainsuite_adapter, chainsuite_expect_profile).run(chainsuite_case)
    if result.status is Status.SKIPPED:
        pytest.skip(result.message)
    assert result.status is Status.PASSED, result.message
