"""VMDK: monolithic sparse files (``KDMV``) with an embedded descriptor, and descriptor files.

The parent is named by a descriptor line ``parentFileNameHint="..."``. libvirt
searches the text after offset 0x200 of its header buffer and records no
format; qemu reads 10240 bytes at the descriptor offset, skips exactly the 20
characters of ``parentFileNameHint="`` and forces the parent format to vmdk.
"""

from __future__ import annotations

import re

from simulator.formats.header import Header, HeaderInfo, HeaderRejected, LibvirtReadRules

MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
SPARSE_DESCRIPTOR_OFFSET = 0x200
DESCRIPTOR_SIZE = 20 * 512
DESCRIPTOR_FILE_MAX = 1024 * 1024 - 1
HINT = b'parentFileNameHint="'
DESCRIPTOR_FILE_TYPES = frozenset(
    {
        "monolithicFlat",
        "vmfs",
        "vmfsSparse",
        "seSparse",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    }
)
_EXTENT_LINE = re.compile(rb'^(\S{1,10})\s+(-?\d+)\s+(\S{1,10})\s+"([^\n\r"]{1,511})"')


def decode_libvirt(header: Header, rules: LibvirtReadRules) -> HeaderInfo:
    """libvirt's vmdk4GetBackingStore: strstr over the text after 0x200, format left to probing."""
    capacity = header.u64le(12) * 512 if header.has(12, 8) else None
    info = HeaderInfo(format="vmdk", virtual_size=capacity)
    if header.length <= SPARSE_DESCRIPTOR_OFFSET:
        return info
    end = SPARSE_DESCRIPTOR_OFFSET + rules.vmdk_descriptor_limit
    text = header.c_string(SPARSE_DESCRIPTOR_OFFSET, end)
    start = text.find(HINT)
    if start < 0:
        return info
    start += len(HINT)
    close = text.find(b'"', start)
    if close < 0 or close == start:
        return info
    return HeaderInfo(format="vmdk", virtual_size=capacity, backing_name=text[start:close])


def is_sparse(header: Header) -> bool:
    return header.get(0, 4) in (MAGIC, COWD_MAGIC)


def decode_qemu(header: Header) -> tuple[HeaderInfo, tuple[bytes, ...]]:
    """qemu 7.2's vmdk_open as ``qemu-img info`` meets it; also the extent files it would open."""
    header = header.zero_filled()
    if is_sparse(header):
        if header.get(0, 4) == MAGIC:
            embedded = header.u64le(28) if header.u64le(12) == 0 else 0
            if embedded:
                # vmdk_open_vmdk4: no capacity, so the embedded text is a descriptor file.
                capacity, extents = _descriptor_file(header, embedded * 512)
                name = _qemu_parent(header, SPARSE_DESCRIPTOR_OFFSET)
                return _info(capacity, name, header.u32le(4)), extents
            capacity = _vmdk4_capacity(header)
        else:
            if header.u32le(16) == 0:
                raise HeaderRejected("Invalid argument")
            capacity = header.u32le(12) * 512
        name = _qemu_parent(header, SPARSE_DESCRIPTOR_OFFSET)
        return _info(capacity, name, header.u32le(4)), ()
    capacity, extents = _descriptor_file(header, 0)
    return _info(capacity, _qemu_parent(header, 0), None), extents


def _descriptor_file(header: Header, offset: int) -> tuple[int, tuple[bytes, ...]]:
    """vmdk_open_desc_file: the create type must be a descriptor file's; RW extents count."""
    text = header.c_string(offset, offset + DESCRIPTOR_FILE_MAX)
    create_type = _descriptor_value(text, b"createType")
    if create_type is None:
        raise HeaderRejected("invalid VMDK image descriptor")
    if create_type not in DESCRIPTOR_FILE_TYPES:
        raise HeaderRejected(f"Unsupported image type '{create_type}'")
    extents: list[bytes] = []
    sectors_total = 0
    for line in text.splitlines():
        match = _EXTENT_LINE.match(line.strip())
        if match is None or match.group(1) != b"RW":
            continue
        sectors = int(match.group(2))
        if sectors <= 0:
            raise HeaderRejected("Invalid extent line")
        sectors_total += sectors
        extents.append(match.group(4))
    if not extents:
        raise HeaderRejected("Not enough extents")
    return sectors_total * 512, tuple(extents)


def _vmdk4_capacity(header: Header) -> int:
    """vmdk_open_vmdk4's checks on the sparse header, then the capacity in bytes."""
    version = header.u32le(4)
    if version > 3:
        raise HeaderRejected(f"Unsupported VMDK version {version}")
    gtes_per_gt = header.u32le(44)
    if gtes_per_gt > 512:
        raise HeaderRejected("L2 table size too big")
    if gtes_per_gt * header.u64le(20) == 0:
        raise HeaderRejected("L1 entry size is invalid")
    return header.u64le(12) * 512


def _info(capacity: int, name: bytes | None, version: int | None) -> HeaderInfo:
    return HeaderInfo(
        format="vmdk",
        virtual_size=capacity,
        backing_name=name,
        backing_format_records=("vmdk",) if name else (),
        version=version,
    )


def _qemu_parent(header: Header, offset: int) -> bytes | None:
    """vmdk_parent_open: strstr for the key, skip 20 characters, copy up to the next quote."""
    text = header.c_string(offset, offset + DESCRIPTOR_SIZE)
    found = text.find(b"parentFileNameHint")
    if found < 0:
        return None
    start = found + len(HINT)
    close = text.find(b'"', start)
    if close < 0:
        raise HeaderRejected("Invalid argument")
    if close - start > 4095:
        raise HeaderRejected("Invalid argument")
    return text[start:close] or None


def _descriptor_value(text: bytes, key: bytes) -> str | None:
    """vmdk_parse_description: the first ``key``, skip two characters (``="``), up to a quote."""
    found = text.find(key)
    if found < 0:
        return None
    start = found + len(key) + 2
    close = text.find(b'"', start)
    if start >= len(text) or close < 0:
        return None
    return text[start:close].decode("ascii", errors="replace")
