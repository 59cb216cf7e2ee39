"""Format detection from a header, as libvirt (by era) and qemu do it.

libvirt scans a fixed table in enum order: the first magic whose version also
matches wins; a magic with a wrong version is only remembered, and the answer
is then raw. qemu asks every driver for a score over the first 512 bytes
(zero-padded) and takes the highest; raw always scores 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from simulator.formats.header import Header


@dataclass(frozen=True)
class MagicRule:
    """One row of libvirt's fileTypeInfo table (the parts detection uses)."""

    format: str
    offset: int
    magic: bytes
    version_offset: int | None = None
    """None: an unversioned format, any version matches."""
    version_size: int = 4
    little_endian: bool = False
    versions: frozenset[int] = frozenset()
    capacity_offset: int | None = None
    capacity_multiplier: int = 1


LIBVIRT_TABLE: tuple[MagicRule, ...] = (
    MagicRule("iso", 32769, b"CD001", little_endian=True),
    MagicRule("vpc", 0, b"conectix", 12, versions=frozenset({0x10000}), capacity_offset=40),
    MagicRule(
        "vdi",
        64,
        b"\x7f\x10\xda\xbe",
        68,
        little_endian=True,
        versions=frozenset({0x00010001}),
        capacity_offset=368,
    ),
    MagicRule(
        "ploop",
        0,
        b"WithouFreSpacExt",
        little_endian=True,
        capacity_offset=36,
        capacity_multiplier=512,
    ),
    MagicRule("cow", 0, b"OOOM", 4, versions=frozenset({2}), capacity_offset=1036),
    MagicRule("qcow", 0, b"QFI", 4, versions=frozenset({1}), capacity_offset=24),
    MagicRule("qcow2", 0, b"QFI", 4, versions=frozenset({2, 3}), capacity_offset=24),
    MagicRule("qed", 0, b"QED", little_endian=True, capacity_offset=48),
    MagicRule(
        "vmdk",
        0,
        b"KDMV",
        4,
        little_endian=True,
        versions=frozenset({1, 2, 3}),
        capacity_offset=12,
        capacity_multiplier=512,
    ),
)
"""libvirt >= 1.1 (qcow2 v3 known), in virStorageFileFormat order; formats without magic omitted."""

LIBVIRT_2012_TABLE: tuple[MagicRule, ...] = (
    MagicRule("cow", 0, b"OOOM", 4, versions=frozenset({2}), capacity_offset=1036),
    MagicRule("qcow", 0, b"QFI", 4, versions=frozenset({1}), capacity_offset=24),
    MagicRule("qcow2", 0, b"QFI", 4, versions=frozenset({2}), capacity_offset=24),
    MagicRule("qed", 0, b"QED\0", little_endian=True, capacity_offset=48),
    MagicRule(
        "vmdk",
        0,
        b"KDMV",
        4,
        little_endian=True,
        versions=frozenset({1}),
        capacity_offset=12,
        capacity_multiplier=512,
    ),
    MagicRule("vpc", 0, b"conectix", 12, versions=frozenset({0x10000}), capacity_offset=40),
)
"""libvirt 1.0's table (storage_file.c), enum order; iso and dmg went by file name suffix."""

LIBVIRT_2012_SUFFIXES = ((".dmg", "dmg"), (".iso", "iso"))


def _version_matches(rule: MagicRule, header: Header) -> bool:
    if rule.version_offset is None:
        return True
    if not header.has(rule.version_offset, rule.version_size):
        return False
    raw = header.get(rule.version_offset, rule.version_offset + rule.version_size)
    order = "<" if rule.little_endian else ">"
    code = "H" if rule.version_size == 2 else "I"
    return int(struct.unpack(order + code, raw)[0]) in rule.versions


def _magic_matches(rule: MagicRule, header: Header) -> bool:
    if not header.has(rule.offset, len(rule.magic)):
        return False
    return header.get(rule.offset, rule.offset + len(rule.magic)) == rule.magic


def detect_libvirt(header: Header, table: tuple[MagicRule, ...] = LIBVIRT_TABLE) -> str:
    """virStorageFileProbeFormatFromBuf: first full match in table order, else raw."""
    for rule in table:
        if _magic_matches(rule, header) and _version_matches(rule, header):
            return rule.format
    return "raw"


def detect_libvirt_2012(header: Header, filename: str) -> str:
    """libvirt 1.0: magic and version first, then the file name suffix, else raw."""
    found = detect_libvirt(header, LIBVIRT_2012_TABLE)
    if found != "raw":
        return found
    for suffix, name in LIBVIRT_2012_SUFFIXES:
        if filename.endswith(suffix):
            return name
    return "raw"


def libvirt_capacity(rule_format: str, header: Header) -> int | None:
    """The capacity field of a format libvirt only detects (vpc, vdi, ploop, ...)."""
    for rule in LIBVIRT_TABLE:
        if rule.format == rule_format and rule.capacity_offset is not None:
            if not header.has(rule.capacity_offset, 8):
                return None
            raw = header.get(rule.capacity_offset, rule.capacity_offset + 8)
            value = int(struct.unpack("<Q" if rule.little_endian else ">Q", raw)[0])
            return value * rule.capacity_multiplier
    return None


QEMU_PROBE_SIZE = 512
_CLOOP_MAGIC = (
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
)


def detect_qemu(first_bytes: bytes, filename: str) -> str:
    """bdrv_probe_all over 512 zero-padded bytes; raw scores 1, so it is the fallback."""
    buf = first_bytes[:QEMU_PROBE_SIZE].ljust(QEMU_PROBE_SIZE, b"\0")
    best, best_score = "raw", 1
    for name, score in _qemu_scores(buf, filename):
        if score > best_score:
            best, best_score = name, score
    return best


def _qemu_scores(buf: bytes, filename: str) -> list[tuple[str, int]]:
    be32 = struct.unpack_from(">I", buf, 4)[0]
    scores = []
    if buf[:4] == b"QFI\xfb":
        if be32 >= 2:
            scores.append(("qcow2", 100))
        elif be32 == 1:
            scores.append(("qcow", 100))
    if buf[:4] == b"QED\0":
        scores.append(("qed", 100))
    if buf[:4] in (b"KDMV", b"COWD") or _vmdk_text_probe(buf):
        scores.append(("vmdk", 100))
    if buf[:8] == b"conectix":
        scores.append(("vpc", 100))
    if buf[:8] == b"vhdxfile":
        scores.append(("vhdx", 100))
    if buf[64:68] == b"\x7f\x10\xda\xbe":
        scores.append(("vdi", 100))
    if buf[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt") and buf[16:20] == b"\x02\0\0\0":
        scores.append(("parallels", 100))
    if _bochs_probe(buf):
        scores.append(("bochs", 100))
    if buf[:6] == b"LUKS\xba\xbe" and buf[6:8] == b"\0\x01":
        scores.append(("luks", 100))
    if buf.startswith(_CLOOP_MAGIC):
        scores.append(("cloop", 2))
    if len(filename) > 4 and filename.endswith(".dmg"):
        scores.append(("dmg", 2))
    return scores


def _bochs_probe(buf: bytes) -> bool:
    def c_field(start: int, size: int) -> bytes:
        return buf[start : start + size].split(b"\0", 1)[0]

    version = struct.unpack_from("<I", buf, 64)[0]
    return (
        c_field(0, 32) == b"Bochs Virtual HD Image"
        and c_field(32, 16) == b"Redolog"
        and c_field(48, 16) == b"Growing"
        and version in (0x00020000, 0x00010000)
    )


def _vmdk_text_probe(buf: bytes) -> bool:
    """vmdk_probe's text rule: comment and all-space lines, then a ``version=N`` line."""
    position, end = 0, len(buf)
    while position < end:
        char = buf[position : position + 1]
        if char == b"#":
            newline = buf.find(b"\n", position)
            position = end if newline < 0 else newline + 1
            continue
        if char == b" ":
            while position < end and buf[position : position + 1] == b" ":
                position += 1
            if position < end and buf[position : position + 1] == b"\r":
                position += 1
            if position == end or buf[position : position + 1] != b"\n":
                return False
            position += 1
            continue
        rest = buf[position:]
        return any(
            rest.startswith(b"version=%d%s" % (number, eol))
            for number in (1, 2, 3)
            for eol in (b"\n", b"\r\n")
        )
    return False
