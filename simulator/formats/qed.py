"""QED: the backing name behind feature bit 0x01; only "raw" can be recorded as its format.

Layout (little-endian, 64 bytes): magic ``QED\\0`` @0, cluster_size @4,
table_size @8, header_size @12 (clusters), features @16 (u64), compat @24,
autoclear @32, l1_table_offset @40, image_size @48 (u64),
backing_filename_offset @56 (u32), backing_filename_size @60 (u32).
"""

from __future__ import annotations

from dataclasses import replace

from simulator.formats.header import Header, HeaderInfo, HeaderRejected

MAGIC = b"QED\0"
HEADER_LENGTH = 64
F_BACKING_FILE = 0x01
F_NEED_CHECK = 0x02
F_BACKING_FORMAT_NO_PROBE = 0x04
KNOWN_FEATURES = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE
PATH_MAX = 4096


def decode_libvirt(header: Header) -> HeaderInfo:
    """libvirt's qedGetBackingStore: NO_PROBE means raw, otherwise probed under AUTO_SAFE."""
    size = header.u64le(48) if header.has(48, 8) else None
    info = HeaderInfo(format="qed", virtual_size=size)
    if not header.has(16, 8) or not header.u64le(16) & F_BACKING_FILE:
        return info
    if not header.has(56, 8):
        return info
    features = header.u64le(16)
    offset = header.u32le(56)
    length = header.u32le(60)
    if offset > header.length or length == 0 or offset + length > header.length:
        return info
    name = header.get(offset, offset + length)
    if features & F_BACKING_FORMAT_NO_PROBE:
        return _with_backing(info, name, ("raw",), probe_safe=False)
    return _with_backing(info, name, (), probe_safe=True)


def decode_qemu(header: Header) -> HeaderInfo:
    """qemu 7.2's bdrv_qed_do_open checks that ``qemu-img info`` meets."""
    header = header.zero_filled()
    if not header.has(0, HEADER_LENGTH) or header.get(0, 4) != MAGIC:
        raise HeaderRejected("Image not in QED format")
    features = header.u64le(16)
    if features & ~KNOWN_FEATURES:
        raise HeaderRejected(f"Unsupported QED features: {features & ~KNOWN_FEATURES:x}")
    cluster_size = header.u32le(4)
    table_size = header.u32le(8)
    header_size = header.u32le(12)
    image_size = header.u64le(48)
    if not _power_of_two(cluster_size) or not 4096 <= cluster_size <= 64 * 1024 * 1024:
        raise HeaderRejected("QED cluster size is invalid")
    if not _power_of_two(table_size) or not 1 <= table_size <= 16:
        raise HeaderRejected("QED table size is invalid")
    max_size = cluster_size * (table_size * cluster_size // 8) ** 2
    if image_size % 512 or image_size > max_size:
        raise HeaderRejected("QED image size is invalid")
    name = None
    records: tuple[str, ...] = ()
    if features & F_BACKING_FILE:
        offset = header.u32le(56)
        length = header.u32le(60)
        if offset + length > cluster_size * header_size:
            raise HeaderRejected("QED backing filename offset is invalid")
        if length >= PATH_MAX:
            raise HeaderRejected("Failed to read backing filename")
        raw = header.get(offset, offset + length)
        name = (raw + bytes(length - len(raw))).split(b"\0", 1)[0] or None
        if features & F_BACKING_FORMAT_NO_PROBE:
            records = ("raw",)
    return HeaderInfo(
        format="qed",
        virtual_size=image_size,
        backing_name=name,
        backing_format_records=records if name else (),
        cluster_size=cluster_size,
    )


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _with_backing(
    info: HeaderInfo, name: bytes, records: tuple[str, ...], probe_safe: bool
) -> HeaderInfo:
    return replace(
        info, backing_name=name, backing_format_records=records, backing_probe_safe=probe_safe
    )
