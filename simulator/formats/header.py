"""The bytes of an image header as a decoder sees them, and what a decoder reports.

Decoders are pure: they read from a ``Header`` and never touch a file. A header
holds the bytes read so far from offset 0 and the length the active rules allow
(libvirt reads at most a fixed number of bytes, never past the end of the
file). When a decoder needs bytes that lie within that length but have not
been read yet, it raises ``NeedMoreBytes`` and the caller reads further and
decodes again; so a well-formed header costs one small read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from simulator.values import quick_init

_U16BE = struct.Struct(">H")
_U32BE = struct.Struct(">I")
_U64BE = struct.Struct(">Q")
_U32LE = struct.Struct("<I")
_U64LE = struct.Struct("<Q")


class NeedMoreBytes(Exception):
    """The decoder needs the header read up to ``end`` (exclusive)."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


class HeaderRejected(Exception):
    """The header is one the rules refuse to open (qemu's open errors)."""


@quick_init
@dataclass(frozen=True)
class Header:
    """Bytes from offset 0; ``length`` is how many bytes the rules let the decoder see.

    With ``zero_fill`` (qemu's reading), bytes past ``length`` read as zeros
    instead of being absent, as qemu's block layer pads a read past the end of
    a file.
    """

    data: bytes
    length: int
    zero_fill: bool = False

    @classmethod
    def of(cls, data: bytes) -> Header:
        """A header that is completely read: the decoder sees exactly ``data``."""
        return cls(data, len(data))

    def zero_filled(self) -> Header:
        """The same bytes, read as qemu reads them: zeros past the end."""
        return Header(self.data, self.length, zero_fill=True)

    def get(self, start: int, end: int) -> bytes:
        """Bytes [start, end) clipped to ``length`` (or zero-filled); asks for unread bytes."""
        if start >= end:
            return b""
        available_end = min(end, self.length)
        if available_end > len(self.data):
            raise NeedMoreBytes(available_end)
        chunk = self.data[start:available_end]
        if self.zero_fill:
            return chunk + bytes(end - start - len(chunk))
        return chunk

    def has(self, start: int, size: int) -> bool:
        """Whether [start, start+size) lies within what the rules let the decoder see."""
        return start + size <= self.length

    def _number(self, codec: struct.Struct, offset: int) -> int:
        end = offset + codec.size
        if end <= len(self.data) and end <= self.length:
            return int(codec.unpack_from(self.data, offset)[0])
        raw = self.get(offset, end)
        if len(raw) < codec.size:
            raise HeaderRejected(f"header too short: {codec.size} bytes wanted at offset {offset}")
        return int(codec.unpack(raw)[0])

    def unpack(self, codec: struct.Struct, offset: int) -> tuple[Any, ...]:
        """Several fields at once (a struct layout), with the same clipping as one number."""
        end = offset + codec.size
        if end <= len(self.data) and end <= self.length:
            return codec.unpack_from(self.data, offset)
        raw = self.get(offset, end)
        if len(raw) < codec.size:
            raise HeaderRejected(f"header too short: {codec.size} bytes wanted at offset {offset}")
        return codec.unpack(raw)

    def u16be(self, offset: int) -> int:
        return self._number(_U16BE, offset)

    def u32be(self, offset: int) -> int:
        return self._number(_U32BE, offset)

    def u64be(self, offset: int) -> int:
        return self._number(_U64BE, offset)

    def u32le(self, offset: int) -> int:
        return self._number(_U32LE, offset)

    def u64le(self, offset: int) -> int:
        return self._number(_U64LE, offset)

    def c_string(self, start: int, limit: int) -> bytes:
        """Bytes from ``start`` up to the first NUL, at most up to ``limit`` (C's strnlen)."""
        if not self.zero_fill:
            limit = min(limit, self.length)
        position = start
        chunk = 256
        while position < limit:
            piece = self.get(position, min(position + chunk, limit))
            nul = piece.find(b"\0")
            if nul >= 0:
                return self.get(start, position + nul)
            position += len(piece)
            chunk *= 2
        return self.get(start, limit)


@quick_init
@dataclass(frozen=True)
class HeaderInfo:
    """What one header says about its image, as the active rules read it.

    ``backing_name`` is None when the rules see no backing.
    ``backing_format_records`` are the backing-format names the header records,
    verbatim, in the order the rules met them (a qcow2 header may hold several).
    ``backing_probe_safe`` is QED's case of an unrecorded format that libvirt
    probes under its safe rule (AUTO_SAFE).
    """

    format: str
    virtual_size: int | None = None
    backing_name: bytes | None = None
    backing_format_records: tuple[str, ...] = ()
    backing_probe_safe: bool = False
    version: int | None = None
    cluster_size: int | None = None
    compat: str | None = None
    features: frozenset[str] = frozenset()
    data_file: bytes | None = None
    encryption: str | None = None

    @property
    def backing_format(self) -> str | None:
        """The recorded backing format as qemu reports it: the last one recorded, if not empty."""
        return self.backing_format_records[-1] or None if self.backing_format_records else None


@dataclass(frozen=True)
class LibvirtReadRules:
    """The header-reading rules that differ between libvirt eras (fields of a Profile)."""

    backing_name_max: int | None
    """Longest backing name accepted; a longer one reads as no backing (None: no limit)."""
    qcow2_v3_extensions_at_header_length: bool
    """Scan qcow2 v3 extensions from header_length (else from 72, as libvirt 0.10-1.0 did)."""
    qcow2_extension_needs_nul: bool
    """The backing-format string must be followed by a NUL byte to count (libvirt <= 5.x)."""
    qcow2_extension_padding: bool
    """Step over extensions rounded up to 8 bytes, as the qcow2 spec says (libvirt >= 10.10)."""
    vmdk_descriptor_limit: int
    """How far past offset 0x200 the VMDK descriptor is searched, at most."""


def decode_c_name(raw: bytes) -> str:
    """A recorded name as C sees it: cut at the first NUL; undecodable bytes kept as escapes."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", errors="surrogateescape")
