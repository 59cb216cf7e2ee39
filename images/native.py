"""Images written without qemu-img, laid out as qemu-img 7.2 lays them out.

qcow2 (compat 0.10 and 1.1) comes from the simulator's encoder; qcow (v1) and
QED are laid out here field for field as ``qemu-img create`` writes them (the
files are byte-identical), so ``qemu-img check`` passes and ``qemu-img info``
reads them as it reads its own; raw is a sparse file of the size. VMDK is not
written here: its descriptor carries a random CID and the parent's CID, and the
builder makes it with qemu-img.

The encoders are pure: they return a ``SparseImage`` (the length and the
non-zero extents), whose ``to_bytes()`` is the whole file; only
``write_image`` touches a file. Unlike qemu-img they write a backing without a
recorded format (qemu-img >= 6.1 refuses to) and never open the backing.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

from simulator.formats import qcow2

NATIVE_FORMATS = frozenset({"qcow2", "qcow", "qed", "raw"})
SECTOR_SIZE = 512
SPARSE_BLOCK = 4096
_ZERO_BLOCK = bytes(SPARSE_BLOCK)

QCOW_HEADER = struct.Struct(">4sIQIIQBBHIQ")
QCOW_VERSION = 1
QCOW_VVFAT_BACKING = "fat:"
"""qemu's qcow create takes this backing name for vvfat's and records no backing."""

QED_HEADER = struct.Struct("<4sIIIQQQQQII")
QED_MAGIC = b"QED\0"
QED_CLUSTER_SIZE = 64 * 1024
QED_TABLE_SIZE = 4
QED_HEADER_CLUSTERS = 1
QED_F_BACKING_FILE = 0x01
QED_F_BACKING_FORMAT_NO_PROBE = 0x04


class NativeWriteError(ValueError):
    """An image the native writer cannot produce (a format it does not write, a bad size)."""


@dataclass(frozen=True)
class SparseImage:
    """A file as its length and its non-zero extents ``(offset, data)``, in order."""

    length: int
    extents: tuple[tuple[int, bytes], ...] = ()

    @classmethod
    def of(cls, data: bytes) -> SparseImage:
        """The extents of ``data``: runs of 4 KiB blocks that are not all zero."""
        extents: list[tuple[int, bytes]] = []
        run_start = None
        for start in range(0, len(data), SPARSE_BLOCK):
            zero = data[start : start + SPARSE_BLOCK] == _ZERO_BLOCK[: len(data) - start]
            if not zero and run_start is None:
                run_start = start
            if zero and run_start is not None:
                extents.append((run_start, data[run_start:start]))
                run_start = None
        if run_start is not None:
            extents.append((run_start, data[run_start:]))
        return cls(len(data), tuple(extents))

    def to_bytes(self) -> bytes:
        whole = bytearray(self.length)
        for offset, data in self.extents:
            whole[offset : offset + len(data)] = data
        return bytes(whole)

    def with_bytes_at(self, offset: int, data: bytes) -> SparseImage:
        """The image with ``data`` written at ``offset``."""
        for index, (start, chunk) in enumerate(self.extents):
            if start <= offset and offset + len(data) <= start + len(chunk):
                at = offset - start
                patched = (start, chunk[:at] + data + chunk[at + len(data) :])
                extents = (*self.extents[:index], patched, *self.extents[index + 1 :])
                return SparseImage(self.length, extents)
        whole = bytearray(self.to_bytes())
        whole[offset : offset + len(data)] = data
        return SparseImage.of(bytes(whole))


def rounded_size(size: int) -> int:
    """The virtual size qemu-img gives an image asked for ``size`` bytes: a multiple of 512."""
    if size < 0:
        raise NativeWriteError(f"negative size {size}")
    return -(-size // SECTOR_SIZE) * SECTOR_SIZE


def recorded_backing_name(fmt: str, backing: str | None) -> str | None:
    """The backing name an image of ``fmt`` records when asked for ``backing``."""
    if not backing or fmt == "raw":
        return None
    if fmt == "qcow" and backing == QCOW_VVFAT_BACKING:
        return None
    return backing


def recorded_backing_format(
    fmt: str, backing: str | None, backing_format: str | None
) -> str | None:
    """The backing format ``qemu-img info`` reports for an image created with these.

    qcow2 records any name; QED records only ``raw``; qcow (v1) records none;
    VMDK records none but qemu forces ``vmdk``.
    """
    if recorded_backing_name(fmt, backing) is None:
        return None
    if fmt == "qcow2":
        return backing_format
    if fmt == "qed":
        return "raw" if backing_format == "raw" else None
    if fmt == "vmdk":
        return "vmdk"
    return None


def image(
    fmt: str,
    size: int,
    backing: str | None = None,
    backing_format: str | None = None,
    compat: str | None = None,
) -> SparseImage:
    """An empty image of ``fmt`` naming ``backing`` verbatim (raw: only the size counts)."""
    if fmt == "qcow2":
        return qcow2_image(size, backing, backing_format, compat)
    if fmt == "qcow":
        return qcow_image(size, backing)
    if fmt == "qed":
        return qed_image(size, backing, backing_format)
    if fmt == "raw":
        return SparseImage(rounded_size(size))
    raise NativeWriteError(f"the native writer does not write {fmt!r} images")


def image_bytes(
    fmt: str,
    size: int,
    backing: str | None = None,
    backing_format: str | None = None,
    compat: str | None = None,
) -> bytes:
    """The whole file of ``image(...)``."""
    return image(fmt, size, backing, backing_format, compat).to_bytes()


def qcow2_image(
    size: int,
    backing: str | None = None,
    backing_format: str | None = None,
    compat: str | None = None,
) -> SparseImage:
    """A qcow2 image: compat ``0.10`` is version 2, anything else version 3.

    The encoder lays an image out from the name's length alone, so one encoding
    per length serves every name of that length: the name is put in its place.
    """
    name = recorded_backing_name("qcow2", backing)
    version = 2 if compat == "0.10" else 3
    virtual_size = rounded_size(size)
    if name is None:
        return _qcow2_layout(virtual_size, 0, None, version)
    encoded = _encoded(name)
    layout = _qcow2_layout(virtual_size, len(encoded), backing_format, version)
    (offset,) = struct.unpack_from(">Q", layout.extents[0][1], 8)
    return layout.with_bytes_at(offset, encoded)


@functools.lru_cache(maxsize=64)
def _qcow2_layout(
    virtual_size: int, name_length: int, backing_format: str | None, version: int
) -> SparseImage:
    """The encoder's image with a backing name of ``name_length`` placeholder bytes."""
    layout = qcow2.Qcow2Image(
        virtual_size=virtual_size,
        backing_name=b"\xff" * name_length if name_length else None,
        backing_format=backing_format if name_length else None,
        version=version,
    )
    try:
        return SparseImage.of(qcow2.encode(layout))
    except ValueError as error:
        raise NativeWriteError(f"qcow2: {error}") from None


def qcow_image(size: int, backing: str | None = None) -> SparseImage:
    """A qcow (v1) image as qemu's ``qcow_co_create`` writes it.

    48-byte header, the backing name right after it, then the L1 table (zeroed
    whole sectors) at the header's end rounded up to 8. Clusters are 512 bytes
    with 32 KiB L2 tables when a backing is named, 4 KiB with 4 KiB otherwise.
    """
    virtual_size = rounded_size(size)
    if virtual_size == 0:
        raise NativeWriteError("qcow: Image size is too small, cannot be zero length")
    if backing:
        cluster_bits, l2_bits = 9, 12
    else:
        cluster_bits, l2_bits = 12, 9
    name = _encoded(backing) if backing and backing != QCOW_VVFAT_BACKING else b""
    l1_offset = (QCOW_HEADER.size + len(name) + 7) & ~7
    l1_entries = -(-virtual_size // (1 << (cluster_bits + l2_bits)))
    l1_sectors = -(-(l1_entries * 8) // SECTOR_SIZE)
    header = QCOW_HEADER.pack(
        qcow2.MAGIC,
        QCOW_VERSION,
        QCOW_HEADER.size if name else 0,
        len(name),
        0,
        virtual_size,
        cluster_bits,
        l2_bits,
        0,
        0,
        l1_offset,
    )
    return SparseImage(l1_offset + l1_sectors * SECTOR_SIZE, ((0, header + name),))


def qed_image(
    size: int, backing: str | None = None, backing_format: str | None = None
) -> SparseImage:
    """A QED image as qemu's ``bdrv_qed_co_create`` writes it.

    64 KiB clusters, a one-cluster header holding the backing name at offset 64,
    then a four-cluster zeroed L1 table; ``raw`` is the only backing format
    recorded (feature bit NO_PROBE), any other is left to probing.
    """
    virtual_size = rounded_size(size)
    l1_bytes = QED_CLUSTER_SIZE * QED_TABLE_SIZE
    largest = QED_CLUSTER_SIZE * (l1_bytes // 8) ** 2
    if virtual_size > largest:
        raise NativeWriteError(f"qed: size {virtual_size} exceeds {largest} bytes")
    name = _encoded(backing) if backing else b""
    header_bytes = QED_CLUSTER_SIZE * QED_HEADER_CLUSTERS
    if QED_HEADER.size + len(name) > header_bytes:
        raise NativeWriteError("qed: backing name does not fit in the header cluster")
    features = 0
    if name:
        features |= QED_F_BACKING_FILE
        if backing_format == "raw":
            features |= QED_F_BACKING_FORMAT_NO_PROBE
    header = QED_HEADER.pack(
        QED_MAGIC,
        QED_CLUSTER_SIZE,
        QED_TABLE_SIZE,
        QED_HEADER_CLUSTERS,
        features,
        0,
        0,
        header_bytes,
        virtual_size,
        QED_HEADER.size if name else 0,
        len(name),
    )
    return SparseImage(header_bytes + l1_bytes, ((0, header + name),))


def write_image(path: Path, sparse: SparseImage) -> None:
    """Writes the image to ``path`` (replacing what is there), leaving holes where it is zero."""
    with open(path, "wb") as file:
        for offset, data in sparse.extents:
            file.seek(offset)
            file.write(data)
        file.truncate(sparse.length)


def _encoded(name: str) -> bytes:
    return name.encode("utf-8", errors="surrogateescape")
