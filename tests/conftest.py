"""Shared fixtures: real qemu-img, and a skip with a reason when it is missing."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

settings.register_profile("ci", database=None, derandomize=True, print_blob=True)
if os.environ.get("CI"):
    # CI runs the same examples every time: a failure there is one a developer can replay.
    settings.load_profile("ci")

QEMU_IMG_MISSING = "qemu-img is not on PATH; these tests build real images with it"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``qemu_img`` are skipped, with the reason, where qemu-img is missing."""
    if item.get_closest_marker("qemu_img") is not None and shutil.which("qemu-img") is None:
        pytest.skip(QEMU_IMG_MISSING)


@pytest.fixture
def qemu_img() -> str:
    """The path of the qemu-img executable; skips the test when there is none."""
    path = shutil.which("qemu-img")
    if path is None:
        pytest.skip(QEMU_IMG_MISSING)
    return path
