"""The simulated backing rewrite against ``qemu-img rebase -u``, byte for byte.

A block job's completion rewrites the overlay's backing as qemu's qcow2_update_header
does; ``qemu-img rebase -u`` runs the same code on a real file. Both copies of one image
are rewritten, the simulated one through the disk and through memory storage, and all
three must hold the same bytes.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from simulator.formats import qcow2
from simulator.storage import LocalStorage, MemoryStorage
from tests.chains import create, rebase_unsafe

pytestmark = pytest.mark.qemu_img

V3_HEADER_LENGTH = 112
UNKNOWN_EXTENSION = 0x12345678


def with_large_unknown_extension(path: Path) -> Path:
    """An image qemu-img made (v3, no backing), with an unknown 5001-byte header
    extension after its own ones: the backing name then lies past a first small read."""
    data = bytearray(path.read_bytes())
    offset = V3_HEADER_LENGTH
    while True:
        magic, length = struct.unpack_from(">II", data, offset)
        if magic == 0:
            break
        offset += 8 + (length + 7) // 8 * 8
    payload = (bytes(range(1, 256)) * 20)[:5001]  # padded to 5008 in the file
    data[offset : offset + 8] = struct.pack(">II", UNKNOWN_EXTENSION, len(payload))
    data[offset + 8 : offset + 8 + len(payload)] = payload
    end = offset + 8 + 5008
    data[end : end + 8] = bytes(8)
    path.write_bytes(bytes(data))
    return path


def made_by_qemu_img(tmp_path: Path, kind: str) -> Path:
    image = tmp_path / "image.qcow2"
    if kind == "v3-with-backing":
        return create(image, backing="/old/base.qcow2", backing_format="raw")
    if kind == "v2-with-backing":
        return create(image, backing="/old/base.qcow2", backing_format="raw", compat="0.10")
    if kind == "v3-without-backing":
        return create(image)
    if kind == "v3-unknown-extension":
        return with_large_unknown_extension(create(image))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["v3-with-backing", "v2-with-backing", "v3-without-backing", "v3-unknown-extension"]
)
@pytest.mark.parametrize(
    ("backing", "backing_format"), [("/new/base-image.qcow2", "qcow2"), ("rel.raw", "raw")]
)
def test_rewrite_matches_qemu_img_rebase(
    tmp_path: Path, kind: str, backing: str, backing_format: str
) -> None:
    original = made_by_qemu_img(tmp_path, kind)
    by_qemu = shutil.copy(original, tmp_path / "by-qemu.qcow2")
    on_disk = shutil.copy(original, tmp_path / "on-disk.qcow2")
    rebase_unsafe(by_qemu, backing, backing_format)

    qcow2.rewrite_backing(LocalStorage(), str(on_disk), backing, backing_format)
    memory = MemoryStorage()
    memory.write("/image.qcow2", original.read_bytes())
    qcow2.rewrite_backing(memory, "/image.qcow2", backing, backing_format)

    expected = Path(by_qemu).read_bytes()
    assert Path(on_disk).read_bytes() == expected
    assert memory.read_bytes("/image.qcow2") == expected


def test_rewrite_to_no_backing_drops_name_and_format(tmp_path: Path) -> None:
    """A commit into the base of a two-layer chain leaves the top with no backing."""
    original = create(tmp_path / "image.qcow2", backing="/old/base.qcow2", backing_format="raw")
    fresh = create(tmp_path / "fresh.qcow2")
    memory = MemoryStorage()
    memory.write("/image.qcow2", original.read_bytes())
    qcow2.rewrite_backing(memory, "/image.qcow2", None, None)
    assert memory.read_bytes("/image.qcow2") == fresh.read_bytes()
