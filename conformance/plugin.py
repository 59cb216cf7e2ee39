"""The pytest plugin: ``pytest --pyargs conformance --impl IMPL [--profile P] [--expect P]``.

Registered through the ``pytest11`` entry point. It adds the options, turns
every catalogue case into a test item of ``conformance/test_cases.py``, skips
a case whose capabilities the implementation lacks (with the reason) and
applies a known-failures file as strict xfail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.adapters.base import Adapter, AdapterError
from conformance.catalogue import load
from conformance.expectations import KnownFailure, load_expectations


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chainsuite", "chainsuite conformance cases")
    group.addoption("--impl", default="reference", help="implementation adapter spec")
    group.addoption("--profile", default=None, help="the reference's profile")
    group.addoption("--expect", default=None, help="judge by this profile's expectations")
    group.addoption("--expectations", default=None, help="known failures (JSON), strict xfail")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "chainsuite_case" not in metafunc.fixturenames:
        return
    cases = load().cases
    metafunc.parametrize("chainsuite_case", cases, ids=[case.id for case in cases])


@pytest.fixture(scope="session")
def chainsuite_adapter(request: pytest.FixtureRequest) -> Iterator[Adapter]:
    from conformance.adapters.registry import open_adapter

    spec = request.config.getoption("--impl")
    profile = request.config.getoption("--profile")
    if spec == "reference" and profile:
        spec = f"reference:{profile}"
    try:
        adapter = open_adapter(spec)
    except AdapterError as error:
        pytest.exit(f"chainsuite: {error}", returncode=2)
    yield adapter
    adapter.close()


@pytest.fixture(scope="session")
def chainsuite_known_failures(request: pytest.FixtureRequest) -> dict[str, KnownFailure]:
    path = request.config.getoption("--expectations")
    return load_expectations(Path(path)) if path else {}


@pytest.fixture(scope="session")
def chainsuite_expect_profile(request: pytest.FixtureRequest, chainsuite_adapter: Adapter) -> str:
    expect: str | None = request.config.getoption("--expect")
    return expect or chainsuite_adapter.info.profile
