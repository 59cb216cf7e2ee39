"""The qemu-img wrapper against the real qemu-img: results, failures, timeouts, a missing binary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from images import qemu_img
from images.qemu_img import QemuImgError, QemuImgMissing, QemuImgTimeout

pytestmark = pytest.mark.qemu_img


def test_version_is_a_dotted_number() -> None:
    parts = qemu_img.version().split(".")
    assert len(parts) >= 2
    assert all(part.isdigit() for part in parts)


def test_create_with_backing_records_name_and_format(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.raw", "raw", "1M")
    qemu_img.create(
        tmp_path / "top.qcow2",
        "qcow2",
        backing="base.raw",
        backing_format="raw",
        options={"compat": "0.10"},
    )
    info = qemu_img.info(tmp_path / "top.qcow2")
    assert info["backing-filename"] == "base.raw"
    assert info["backing-filename-format"] == "raw"
    assert info["format-specific"]["data"]["compat"] == "0.10"
    assert info["virtual-size"] == 1 << 20


def test_info_backing_chain_is_a_list_top_first(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.raw", "raw", "1M")
    qemu_img.create(tmp_path / "top.qcow2", "qcow2", backing="base.raw", backing_format="raw")
    chain = qemu_img.info("top.qcow2", backing_chain=True, cwd=tmp_path)
    assert [layer["filename"] for layer in chain] == ["top.qcow2", "base.raw"]


def test_unsafe_create_accepts_a_missing_backing(tmp_path: Path) -> None:
    qemu_img.create(
        tmp_path / "t.qcow2",
        "qcow2",
        "1M",
        backing="gone.qcow2",
        backing_format="qcow2",
        unsafe=True,
    )
    assert qemu_img.info(tmp_path / "t.qcow2")["backing-filename"] == "gone.qcow2"


def test_failure_keeps_exit_status_and_stderr(tmp_path: Path) -> None:
    with pytest.raises(QemuImgError) as failure:
        qemu_img.create(tmp_path / "t.qcow2", "qcow2", backing="gone.qcow2", backing_format="qcow2")
    assert failure.value.returncode == 1
    assert "gone.qcow2" in failure.value.stderr
    assert "No such file or directory" in failure.value.stderr
    assert failure.value.command[1] == "create"


def test_missing_backing_format_is_refused_as_qemu_61_refuses_it(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.raw", "raw", "1M")
    with pytest.raises(QemuImgError) as failure:
        qemu_img.create(tmp_path / "t.qcow2", "qcow2", backing="base.raw")
    assert "Backing file specified without backing format" in failure.value.stderr


def test_unsafe_rebase_makes_a_self_loop(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "loop.qcow2", "qcow2", "1M")
    qemu_img.rebase("loop.qcow2", "loop.qcow2", backing_format="qcow2", unsafe=True, cwd=tmp_path)
    assert qemu_img.info(tmp_path / "loop.qcow2")["backing-filename"] == "loop.qcow2"
    with pytest.raises(QemuImgError) as failure:
        qemu_img.info("loop.qcow2", backing_chain=True, cwd=tmp_path)
    assert "Backing file 'loop.qcow2' creates an infinite loop." in failure.value.stderr


def test_commit_empties_the_top_into_its_backing(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.qcow2", "qcow2", "1M")
    qemu_img.create(tmp_path / "top.qcow2", "qcow2", backing="base.qcow2", backing_format="qcow2")
    qemu_img.commit(tmp_path / "top.qcow2")
    assert qemu_img.info(tmp_path / "top.qcow2")["backing-filename"] == "base.qcow2"


def test_check_reports_a_clean_image(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "a.qcow2", "qcow2", "1M")
    result = qemu_img.check(tmp_path / "a.qcow2")
    assert result.clean
    assert result.report["check-errors"] == 0


def test_check_reports_leaks_as_a_result_not_a_failure(tmp_path: Path) -> None:
    image = tmp_path / "a.qcow2"
    qemu_img.create(image, "qcow2", "1M")
    data = bytearray(image.read_bytes())
    cluster = 1 << 16
    # One more cluster, counted in the refcount block but used by nothing: a leak.
    refcount_table = int.from_bytes(data[48:56], "big")
    refcount_block = int.from_bytes(data[refcount_table : refcount_table + 8], "big")
    unused = -(-len(data) // cluster)
    entry = refcount_block + 2 * unused
    data[entry : entry + 2] = (1).to_bytes(2, "big")
    data += bytes((unused + 1) * cluster - len(data))
    image.write_bytes(bytes(data))
    result = qemu_img.check(image)
    assert not result.clean
    assert result.report.get("leaks", 0) >= 1


def test_a_call_that_outlives_its_timeout_is_killed(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.raw"
    os.mkfifo(fifo)
    with pytest.raises(QemuImgTimeout) as failure:
        qemu_img.info(fifo, fmt="raw", timeout=0.5)
    assert "0.5 s" in str(failure.value)


def test_missing_qemu_img_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(QemuImgMissing) as failure:
        qemu_img.version()
    assert "apt-get install" in str(failure.value)
    assert "qemu-utils" in str(failure.value)
