"""qcow version 1: the backing name but never its format.

Layout (big-endian, 48 bytes): magic ``QFI\\xfb`` @0, version 1 @4,
backing_file_offset @8 (u64), backing_file_size @16 (u32), mtime @20, size @24
(u64), cluster_bits @32 (u8), l2_bits @33 (u8), crypt_method @36, l1_table_offset @40.
"""

from __future__ import annotations

from simulator.formats.header import Header, HeaderInfo, HeaderRejected, LibvirtReadRules
from simulator.formats.qcow2 import MAGIC

HEADER_LENGTH = 48


def decode_libvirt(header: Header, rules: LibvirtReadRules) -> HeaderInfo:
    """libvirt's qcowXGetBackingStore without extensions: the format is never recorded."""
    size = header.u64be(24) if header.has(24, 8) else None
    crypt = header.u32be(36) if header.has(36, 4) else 0
    name = None
    if header.has(8, 12):
        offset = header.u64be(8)
        length = header.u32be(16)
        fits = offset + length <= header.length
        within_limit = rules.backing_name_max is None or length <= rules.backing_name_max
        if offset and length and offset <= header.length and within_limit and fits:
            name = header.get(offset, offset + length)
    return HeaderInfo(
        format="qcow",
        virtual_size=size,
        backing_name=name,
        version=1,
        encryption="aes" if crypt == 1 else None,
    )


def decode_qemu(header: Header) -> HeaderInfo:
    """qemu 7.2's qcow_open checks, in order (the header zero-filled past the file's end)."""
    header = header.zero_filled()
    if header.get(0, 4) != MAGIC:
        raise HeaderRejected("Image not in qcow format")
    version = header.u32be(4)
    if version != 1:
        raise HeaderRejected(f"qcow (v1) does not support qcow version {version}")
    size = header.u64be(24)
    if size <= 1:
        raise HeaderRejected("Image size is too small (must be at least 2 bytes)")
    cluster_bits = header.get(32, 33)[0]
    if cluster_bits < 9 or cluster_bits > 16:
        raise HeaderRejected("Cluster size must be between 512 and 64k")
    l2_bits = header.get(33, 34)[0]
    if l2_bits < 6 or l2_bits > 13:
        raise HeaderRejected("L2 table size must be between 512 and 64k")
    if header.u32be(36) > 1:
        raise HeaderRejected("invalid encryption method in qcow header")
    name = None
    offset = header.u64be(8)
    if offset:
        length = header.u32be(16)
        if length > 1023:
            raise HeaderRejected("Backing file name too long")
        name = header.get(offset, offset + length).split(b"\0", 1)[0] or None
    crypt = header.u32be(36)
    return HeaderInfo(
        format="qcow",
        virtual_size=size // 512 * 512,
        backing_name=name,
        version=1,
        cluster_size=1 << cluster_bits,
        encryption="aes" if crypt == 1 else None,
    )
