"""qcow2 (versions 2 and 3): header decoding under libvirt's and qemu's rules, and an encoder.

Layout (big-endian): magic ``QFI\\xfb`` @0, version @4, backing_file_offset @8
(u64), backing_file_size @16 (u32), cluster_bits @20, size @24 (u64),
crypt_method @32, ... v2 header ends at 72; v3 adds incompatible @72,
compatible @80, autoclear @88 feature bits, refcount_order @96 and
header_length @100. Header extensions (type u32, length u32, data padded to 8)
follow the header and end at the backing name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from simulator.formats.header import (
    Header,
    HeaderInfo,
    HeaderRejected,
    LibvirtReadRules,
    NeedMoreBytes,
)

if TYPE_CHECKING:
    from simulator.storage import Storage

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
MAX_CLUSTER_BITS = 21
MAX_CLUSTER_SIZE = 1 << MAX_CLUSTER_BITS
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
INCOMPAT_KNOWN = 0x1F
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

_CRYPT_NAMES = {1: "aes", 2: "luks"}
_NO_FEATURES: frozenset[str] = frozenset()
_EXTENSION_HEAD = struct.Struct(">II")
"""A header extension's type and length."""


def _feature_names(incompatible: int, compatible: int) -> frozenset[str]:
    if not incompatible and not compatible:
        return _NO_FEATURES  # the common case, once per layer
    names = set()
    for bit, name in (
        (INCOMPAT_DIRTY, "dirty"),
        (INCOMPAT_CORRUPT, "corrupt"),
        (INCOMPAT_DATA_FILE, "data-file"),
        (INCOMPAT_COMPRESSION, "compression-type"),
        (INCOMPAT_EXTENDED_L2, "extended-l2"),
    ):
        if incompatible & bit:
            names.add(name)
    if compatible & COMPAT_LAZY_REFCOUNTS:
        names.add("lazy-refcounts")
    return frozenset(names)


_LIBVIRT_FIELDS = struct.Struct(">IQIIQI")
"""What libvirt reads from offset 4: version, backing offset and size, cluster bits, size,
crypt method."""


def decode_libvirt(header: Header, rules: LibvirtReadRules) -> HeaderInfo:
    """libvirt's reading (qcowXGetBackingStore, qcow2GetExtensions, qcow2GetFeatures).

    Names that are too long or lie outside the read header are not errors:
    libvirt reads them as no backing at all.
    """
    if header.has(4, _LIBVIRT_FIELDS.size):  # the common case: one unpack
        fields = header.unpack(_LIBVIRT_FIELDS, 4)
        version, backing_offset, backing_size, cluster_bits, size, crypt = fields
    else:
        version = header.u32be(4) if header.has(4, 4) else None
        size = header.u64be(24) if header.has(24, 8) else None
        cluster_bits = header.u32be(20) if header.has(20, 4) else 0
        crypt = header.u32be(32) if header.has(32, 4) else 0
        backing_offset, backing_size = (
            (header.u64be(8), header.u32be(16)) if header.has(8, 12) else (0, 0)
        )
    features: frozenset[str] = _NO_FEATURES
    compat = None
    if version is not None and version >= 3 and header.has(100, 4):
        features = _feature_names(header.u64be(72), header.u64be(80))
        compat = "1.1"
    elif version == 2:
        compat = "0.10"
    name = _libvirt_backing_name(header, rules, backing_offset, backing_size)
    records: tuple[str, ...] = ()
    if name is not None and version is not None:  # a name lies past the version
        records = _libvirt_backing_format_records(header, rules, version, backing_offset)
    return HeaderInfo(
        format="qcow2",
        virtual_size=size,
        backing_name=name,
        backing_format_records=records,
        version=version,
        cluster_size=(1 << cluster_bits) if 0 < cluster_bits < 64 else None,
        compat=compat,
        features=features,
        encryption=_CRYPT_NAMES.get(crypt),
    )


def _libvirt_backing_name(
    header: Header, rules: LibvirtReadRules, offset: int, size: int
) -> bytes | None:
    if offset == 0 or size == 0 or offset > header.length:
        return None
    if rules.backing_name_max is not None and size > rules.backing_name_max:
        return None
    if offset + size > header.length:
        return None
    return header.get(offset, offset + size)


def _libvirt_backing_format_records(
    header: Header, rules: LibvirtReadRules, version: int, end: int
) -> tuple[str, ...]:
    """Backing-format extensions, scanned the way the era's libvirt scanned them, up to
    ``end`` (the backing name's offset)."""
    if version < 2:
        return ()
    if version == 2 or not rules.qcow2_v3_extensions_at_header_length:
        start = V2_HEADER_LENGTH
    else:
        if not header.has(100, 4):
            return ()
        start = header.u32be(100)
    if end > header.length:
        return ()
    found: list[str] = []
    offset = start
    while offset < header.length - 8 and offset < end - 8:
        magic, length = header.unpack(_EXTENSION_HEAD, offset)
        offset += 8
        if offset + length > header.length:
            break
        if magic == EXT_END:
            break
        if magic == EXT_BACKING_FORMAT:
            terminated = header.get(offset + length, offset + length + 1) == b"\0"
            if terminated or not rules.qcow2_extension_needs_nul:
                found.append(_c_text(header.get(offset, offset + length)))
        offset += _round8(length) if rules.qcow2_extension_padding else length
    return tuple(found)


V2_FIELDS = struct.Struct(">4sIQIIQIIQQIIQ")
"""magic, version, backing offset and size, cluster bits, size, crypt method, L1 size and
offset, refcount table offset and clusters, snapshot count and offset: the v2 header."""
V3_FIELDS = struct.Struct(">QQQII")
"""incompatible, compatible and autoclear features, refcount order, header length."""


def decode_qemu(header: Header) -> HeaderInfo:
    """qemu 7.2's qcow2_do_open checks that ``qemu-img info`` meets, in the same order.

    qemu reads past the end of a file as zeros, and so does this decoder.
    """
    header = header.zero_filled()
    (
        magic,
        version,
        backing_offset,
        backing_size,
        cluster_bits,
        size,
        crypt,
        l1_size,
        l1_offset,
        refcount_offset,
        _refcount_clusters,
        _snapshot_count,
        snapshots_offset,
    ) = header.unpack(V2_FIELDS, 0)
    if magic != MAGIC:
        raise HeaderRejected("Image is not in qcow2 format")
    if version < 2 or version > 3:
        raise HeaderRejected(f"Unsupported qcow2 version {version}")
    if cluster_bits < 9 or cluster_bits > 21:
        raise HeaderRejected(f"Unsupported cluster size: 2^{cluster_bits}")
    cluster_size = 1 << cluster_bits
    incompatible = compatible = autoclear = refcount_order = compression_type = 0
    header_length = V2_HEADER_LENGTH
    if version == 3:
        v3 = header.unpack(V3_FIELDS, V2_HEADER_LENGTH)
        incompatible, compatible, autoclear, refcount_order, header_length = v3
        if header_length < V3_HEADER_LENGTH:
            raise HeaderRejected("qcow2 header too short")
        if header_length > cluster_size:
            raise HeaderRejected("qcow2 header exceeds cluster size")
        if header_length > V3_HEADER_LENGTH:
            compression_type = header.get(104, 105)[0]
    if backing_offset > cluster_size:
        raise HeaderRejected("Invalid backing file offset")
    unknown = incompatible & ~INCOMPAT_KNOWN
    if unknown:
        raise HeaderRejected(
            f"Unsupported qcow2 feature(s): Unknown incompatible feature: {unknown:x}"
        )
    if refcount_order > 6:
        raise HeaderRejected("Reference count entry width too large; may not exceed 64 bits")
    if crypt not in _CRYPT_NAMES and crypt != 0:
        raise HeaderRejected(f"Unsupported encryption method {crypt}")
    _check_compression_type(compression_type, incompatible)
    for offset, table in (
        (refcount_offset, "Reference count table"),
        (snapshots_offset, "Snapshot table"),
    ):
        assert isinstance(offset, int)
        if offset % cluster_size:
            raise HeaderRejected(f"{table} offset invalid")
    entry_size = 16 if incompatible & INCOMPAT_EXTENDED_L2 else 8
    l1_needed = -(-size // (cluster_size * (cluster_size // entry_size)))
    if l1_needed > 0x7FFFFFFF:
        raise HeaderRejected("Image is too big")
    if l1_size < l1_needed:
        raise HeaderRejected("L1 table is too small")
    if l1_offset % cluster_size:
        raise HeaderRejected("Active L1 table offset invalid")
    ext_end = backing_offset if backing_offset else cluster_size
    extensions = _qemu_extensions(header, header_length, ext_end)
    name = None
    if backing_offset:
        if backing_size > min(1023, cluster_size - backing_offset):
            raise HeaderRejected("Backing file name too long")
        raw = header.get(backing_offset, backing_offset + backing_size)
        name = raw.split(b"\0", 1)[0] or None
    records = extensions.backing_formats if name is not None else ()
    data_file = extensions.data_file if incompatible & INCOMPAT_DATA_FILE else None
    features = _feature_names(incompatible, compatible)
    if autoclear & AUTOCLEAR_DATA_FILE_RAW:
        features |= {"data-file-raw"}
    return HeaderInfo(
        format="qcow2",
        virtual_size=size // 512 * 512,
        backing_name=name,
        backing_format_records=records,
        version=version,
        cluster_size=cluster_size,
        compat="0.10" if version == 2 else "1.1",
        features=features,
        data_file=data_file,
        encryption=_CRYPT_NAMES.get(crypt),
    )


def _check_compression_type(compression_type: int, incompatible: int) -> None:
    """validate_compression_type: zlib (0) or zstd (1), and the feature bit must agree."""
    if compression_type not in (0, 1):
        raise HeaderRejected(f"qcow2: unknown compression type: {compression_type}")
    if compression_type == 0 and incompatible & INCOMPAT_COMPRESSION:
        raise HeaderRejected("qcow2: Compression type incompatible feature bit must not be set")
    if compression_type != 0 and not incompatible & INCOMPAT_COMPRESSION:
        raise HeaderRejected("qcow2: Compression type incompatible feature bit must be set")


@dataclass(frozen=True)
class _Extensions:
    backing_formats: tuple[str, ...] = ()
    data_file: bytes | None = None


def _qemu_extensions(header: Header, start: int, end: int) -> _Extensions:
    """qcow2_read_extensions: lengths are checked against the end, steps are padded to 8."""
    backing_formats: list[str] = []
    data_file = None
    offset = start
    while offset < end:
        magic, length = header.unpack(_EXTENSION_HEAD, offset)
        offset += 8
        if offset > end or length > end - offset:
            raise HeaderRejected("Header extension too large")
        if magic == EXT_END:
            break
        if magic == EXT_BACKING_FORMAT:
            if length >= 16:
                raise HeaderRejected(f"ERROR: ext_backing_format: len={length} too large (>=16)")
            backing_formats.append(_c_text(header.get(offset, offset + length)))
        elif magic == EXT_DATA_FILE:
            data_file = header.get(offset, offset + length).split(b"\0", 1)[0]
        offset += _round8(length)
    return _Extensions(tuple(backing_formats), data_file)


def _c_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")


def _round8(value: int) -> int:
    return (value + 7) & ~7


@dataclass(frozen=True)
class Qcow2Image:
    """What the encoder writes: a valid, empty qcow2 image as qemu-img lays it out."""

    virtual_size: int
    backing_name: bytes | None = None
    backing_format: str | None = None
    version: int = 3
    cluster_bits: int = 16
    data_file: bytes | None = None


def encode(image: Qcow2Image) -> bytes:
    """An empty qcow2 image (see ``encode_parts``), as one string of bytes."""
    header, rest = encode_parts(image)
    return header + rest


FIRST_PART = 4096
"""How much of an image the first of its parts holds (header, extensions, name, then what
follows them): a header read in memory then takes one slice."""


def encode_parts(image: Qcow2Image) -> tuple[bytes, memoryview]:
    """An empty qcow2 image as its first FIRST_PART bytes (header, extensions, backing name
    and what follows) and the rest (refcount table and block, L1), which images of one
    geometry share.

    The layout follows qemu-img 7.2 (v3: header_length 112, backing format
    extension first, backing name after the end marker), so that ``qemu-img
    check`` accepts it and ``qemu-img info`` reads it as it reads its own.
    """
    if image.version not in (2, 3):
        raise ValueError(f"qcow2 version {image.version} cannot be encoded")
    cluster_size = 1 << image.cluster_bits
    header_length = V2_HEADER_LENGTH if image.version == 2 else 112
    extensions = bytearray()
    if image.backing_format is not None:
        extensions += _extension(EXT_BACKING_FORMAT, image.backing_format.encode())
    if image.data_file is not None:
        extensions += _extension(EXT_DATA_FILE, image.data_file)
    extensions += struct.pack(">II", EXT_END, 0)
    backing_offset = header_length + len(extensions) if image.backing_name else 0
    backing = image.backing_name or b""
    if backing_offset + len(backing) > cluster_size:
        raise ValueError("backing name does not fit in the first cluster")

    l2_entries = cluster_size // 8
    l1_size = max(1, -(-image.virtual_size // (cluster_size * l2_entries)))
    l1_clusters = -(-l1_size * 8 // cluster_size)
    refcount_table_offset = cluster_size
    l1_offset = 3 * cluster_size
    total_clusters = 3 + l1_clusters
    refcount_entries = cluster_size // 2
    if total_clusters > refcount_entries:
        raise ValueError("virtual size too large for a single refcount block")

    incompatible = INCOMPAT_DATA_FILE if image.data_file is not None else 0
    fields = V2_FIELDS.pack(
        MAGIC,
        image.version,
        backing_offset,
        len(backing) if image.backing_name else 0,
        image.cluster_bits,
        image.virtual_size,
        0,
        l1_size,
        l1_offset,
        refcount_table_offset,
        1,
        0,
        0,
    )
    if image.version == 3:
        fields += struct.pack(">QQQII", incompatible, 0, 0, 4, header_length)
        fields += bytes(header_length - len(fields))
    header = fields + bytes(header_length - len(fields)) + extensions
    if image.backing_name:
        header += bytes(backing_offset - len(header)) + backing
    # The rest is shared by every image of this geometry: a view, not a copy.
    empty = _empty_image(image.cluster_bits, l1_clusters)
    first = header + empty[len(header) : FIRST_PART]
    return first, memoryview(empty)[len(first) :]


@cache
def _empty_image(cluster_bits: int, l1_clusters: int) -> bytes:
    """All of an image but its header: a zero first cluster, the refcount table and block,
    an empty L1. They depend on the geometry only, and a simulation encodes thousands."""
    cluster_size = 1 << cluster_bits
    table = bytearray(cluster_size)
    table[0:8] = struct.pack(">Q", 2 * cluster_size)
    block = bytearray(cluster_size)
    for index in range(3 + l1_clusters):
        block[index * 2 : index * 2 + 2] = struct.pack(">H", 1)
    return bytes(cluster_size) + bytes(table) + bytes(block) + bytes(l1_clusters * cluster_size)


def _extension(magic: int, payload: bytes) -> bytes:
    padded = payload + bytes(_round8(len(payload)) - len(payload))
    return struct.pack(">II", magic, len(payload)) + padded


def with_backing(
    header: Header, cluster_size: int, name: bytes | None, backing_format: str | None
) -> tuple[bytes, memoryview]:
    """The first cluster as qemu's qcow2_update_header rewrites it for a new backing: what
    it writes with the zeros after it up to FIRST_PART, then the rest of the cluster's
    zeros (shared, not copied).

    The header is kept; the backing-format extension is replaced (or dropped),
    other extensions are kept in order, and the name follows the end marker.
    ``header`` holds the old first cluster, or enough of it (else NeedMoreBytes).
    """
    version = header.u32be(4)
    header_length = V2_HEADER_LENGTH if version == 2 else header.u32be(100)
    old_offset = header.u64be(8)
    end = old_offset if old_offset else cluster_size
    kept = bytearray()
    offset = header_length
    while offset + 8 <= end:
        magic, length = header.unpack(_EXTENSION_HEAD, offset)
        if magic == EXT_END or offset + 8 + length > end:
            break
        if magic != EXT_BACKING_FORMAT:
            kept += header.get(offset, offset + 8 + _round8(length))
        offset += 8 + _round8(length)
    extensions = bytearray()
    if backing_format is not None and name is not None:
        extensions += _extension(EXT_BACKING_FORMAT, backing_format.encode())
    extensions += kept + struct.pack(">II", EXT_END, 0)
    new_offset = header_length + len(extensions) if name else 0
    if name and new_offset + len(name) > cluster_size:
        raise ValueError("backing name does not fit in the first cluster")
    backing_fields = struct.pack(">QI", new_offset, len(name) if name else 0)
    fields = header.get(0, 8) + backing_fields + header.get(20, header_length)
    written = fields.ljust(header_length, b"\0") + extensions + (name or b"")
    if len(written) > cluster_size:
        raise ValueError("the header does not fit in the first cluster")
    zeros = _zero_cluster(cluster_size)
    first = written + zeros[len(written) : FIRST_PART]
    return first, zeros[len(first) :]


@cache
def _zero_cluster(cluster_size: int) -> memoryview:
    return memoryview(bytes(cluster_size))


def rewrite_backing(
    storage: Storage, path: str, backing: str | None, backing_format: str | None
) -> None:
    """Rewrites the backing name and format an existing qcow2 file records, in place."""
    image = storage.open(path)
    try:
        # The header, its extensions and the name lie in the first FIRST_PART bytes unless
        # a crafted image puts them further.
        head = image.read(0, FIRST_PART)
        cluster = 1 << min(Header.of(head).u32be(20), MAX_CLUSTER_BITS)
        length = min(cluster, image.size)
        name = backing.encode() if backing else None
        try:
            header = Header(head[:length], length)
            written = with_backing(header, cluster, name, backing_format)
        except NeedMoreBytes:
            written = with_backing(Header.of(image.read(0, length)), cluster, name, backing_format)
    finally:
        image.close()
    storage.write(path, written, 0)
