"""Formats without a backing chain of their own: the virtual size qemu 7.2 reports for them."""

from __future__ import annotations

from simulator.formats.header import Header

SECTOR = 512
VHD_MAX_GEOMETRY = 65535 * 16 * 255
VPC_SIZE_FROM_CURRENT_SIZE = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
"""Creators whose footer's current_size qemu trusts over the CHS geometry (vpc_open)."""


def qemu_virtual_size(format: str, header: Header, file_size: int) -> int | None:
    """What ``qemu-img info`` prints as virtual-size; None where this suite does not decode it."""
    if format in ("raw", "file", "host_device", "host_cdrom"):
        return -(-file_size // SECTOR) * SECTOR
    if format == "vdi" and header.has(0x170, 8):
        return header.u64le(0x170) // SECTOR * SECTOR
    if format == "parallels" and header.has(36, 8):
        return header.u64le(36) * SECTOR
    if format == "vpc" and header.has(0, 64):
        return _vpc_size(header)
    return None


def _vpc_size(header: Header) -> int:
    """vpc_open: CHS geometry, unless the creator or a maximal geometry says current_size."""
    sectors = header.u16be(56) * header.get(58, 59)[0] * header.get(59, 60)[0]
    if header.get(28, 32) in VPC_SIZE_FROM_CURRENT_SIZE or sectors == VHD_MAX_GEOMETRY:
        return header.u64be(48) // SECTOR * SECTOR
    return sectors * SECTOR
