"""cow, User-Mode-Linux's format, still known to libvirt: a fixed 1024-byte backing name.

Layout (big-endian): magic ``OOOM`` @0, version 2 @4, backing_file[1024] @8,
mtime @1032, size @1036 (u64), sectorsize @1044.
"""

from __future__ import annotations

from simulator.formats.header import Header, HeaderInfo

MAGIC = b"OOOM"
NAME_OFFSET = 8
NAME_LENGTH = 1024


def decode_libvirt(header: Header) -> HeaderInfo:
    """libvirt's cowGetBackingStore: a NUL first byte means no backing; the format is probed."""
    size = header.u64be(1036) if header.has(1036, 8) else None
    if not header.has(NAME_OFFSET, NAME_LENGTH):
        return HeaderInfo(format="cow", virtual_size=size)
    name = header.get(NAME_OFFSET, NAME_OFFSET + NAME_LENGTH).split(b"\0", 1)[0]
    return HeaderInfo(format="cow", virtual_size=size, backing_name=name or None)
