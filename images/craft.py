"""Byte-level images qemu-img will not make: each a named recipe that probes one rule or CVE.

Every recipe starts from a real layout (the simulator's qcow2 encoder, or the
qcow, QED, VMDK and cow layouts qemu-img and UML write, at their documented
offsets) and patches the one field under test. A recipe writes its files into
the directory it is given and returns the image a prober is pointed at.

Files a crafted header names as "host files" are written inside that same
directory (``host-secret.txt``): what a recipe probes is that the reference
leaves the image, never the content of a real host file.

References: image-formats.md (the reference's qcow2, qcow, QED, VMDK and cow
sections, the error matrix of qemu-img info, the security timeline and the
parser differentials) and libvirt-rules.md §3.3-3.4 and §3.10.
"""

from __future__ import annotations

import inspect
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simulator.formats import qcow2
from simulator.formats.qcow2 import Qcow2Image

MIB = 1024 * 1024
BASE_RAW = "base.raw"
"""The raw image most recipes name as their backing: 1 MiB of zeros."""
HOST_SECRET = "host-secret.txt"
"""The stand-in for a host file a hostile image reaches for (never a real host file)."""
HOST_SECRET_TEXT = b"secret.on.host\n"

QCOW2_CLUSTER = 1 << 16
QCOW2_EXTENSIONS_START = 112
"""Where qemu-img 7.2 (and the encoder) put the first v3 header extension."""
QCOW2_UNKNOWN_EXTENSION = 0x58585858
"""A header extension type qcow2 does not define ("XXXX"): qemu skips and preserves it."""
QCOW2_L2_COPIED = 1 << 63

QCOW_HEADER = struct.Struct(">4sIQIIQBBHIQ")
"""qcow v1: magic, version, backing offset, backing size, mtime, size, cluster_bits,
l2_bits, pad, crypt_method, l1_table_offset (48 bytes)."""
QED_HEADER = struct.Struct("<4sIIIQQQQQII")
"""QED: magic, cluster_size, table_size, header_size, features, compat, autoclear,
l1_table_offset, image_size, backing_filename_offset, backing_filename_size (64 bytes)."""
QED_CLUSTER = 1 << 16
QED_TABLE_SIZE = 4
QED_F_BACKING_FILE = 0x01
QED_F_BACKING_FORMAT_NO_PROBE = 0x04
VMDK_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
"""VMDK4 sparse: magic, version, flags, capacity, granularity, desc_offset, desc_size,
num_gtes_per_gt, rgd_offset, gd_offset, grain_offset, filler, check bytes, compression."""
COW_HEADER = struct.Struct(">4sI1024siQI")
"""UML cow v2: magic, version, backing_file[1024], mtime, size, sectorsize (1048 bytes)."""


@dataclass(frozen=True)
class Recipe:
    """One crafted image: what it probes, where the rule comes from, and how to write it."""

    name: str
    summary: str
    provenance: str
    build: Callable[[Path], Path]


RECIPES: dict[str, Recipe] = {}


def craft(name: str, directory: Path) -> Path:
    """Writes recipe ``name`` into ``directory`` (created if missing); returns its top image."""
    try:
        recipe = RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise KeyError(f"unknown recipe {name!r} (known: {known})") from None
    directory.mkdir(parents=True, exist_ok=True)
    return recipe.build(directory)


def _recipe(
    name: str, provenance: str
) -> Callable[[Callable[[Path], Path]], Callable[[Path], Path]]:
    """Registers a build function; the first paragraph of its docstring is the summary."""

    def register(build: Callable[[Path], Path]) -> Callable[[Path], Path]:
        if name in RECIPES:
            raise ValueError(f"recipe {name!r} registered twice")
        summary = inspect.cleandoc(build.__doc__ or "").split("\n\n", 1)[0].replace("\n", " ")
        RECIPES[name] = Recipe(name, summary, provenance, build)
        return build

    return register


# -- files shared by the recipes ------------------------------------------------------


def _write(path: Path, data: bytes | bytearray, size: int | None = None) -> Path:
    """Writes ``data``, then extends the file with a hole to ``size`` bytes."""
    with open(path, "wb") as file:
        file.write(data)
        if size is not None and size > len(data):
            file.truncate(size)
    return path


def _raw(directory: Path, name: str | bytes = BASE_RAW) -> Path:
    """A raw image of 1 MiB of zeros; ``name`` may be bytes (any name the host allows)."""
    path = os.path.join(os.fsencode(directory), os.fsencode(name))
    return _write(Path(os.fsdecode(path)), b"", MIB)


def _host_secret(directory: Path) -> Path:
    return _write(directory / HOST_SECRET, HOST_SECRET_TEXT)


# -- qcow2 -----------------------------------------------------------------------------


def _qcow2(
    backing_name: bytes | None = BASE_RAW.encode(),
    backing_format: str | None = "raw",
    virtual_size: int = MIB,
) -> bytearray:
    """An empty qcow2 v3 image as qemu-img lays it out (64 KiB clusters)."""
    return bytearray(qcow2.encode(Qcow2Image(virtual_size, backing_name, backing_format)))


def _qcow2_with_extensions(
    extensions: bytes, backing_name: bytes, name_offset: int | None = None
) -> bytearray:
    """A qcow2 v3 image whose extension area (before the end marker) is ``extensions``.

    The backing name follows the end marker, or lies at ``name_offset``.
    """
    image = _qcow2(backing_name=None, backing_format=None)
    area = extensions + struct.pack(">II", qcow2.EXT_END, 0)
    image[QCOW2_EXTENSIONS_START : QCOW2_EXTENSIONS_START + len(area)] = area
    offset = QCOW2_EXTENSIONS_START + len(area) if name_offset is None else name_offset
    return _qcow2_set_backing(image, backing_name, offset)


def _qcow2_set_backing(image: bytearray, name: bytes, offset: int) -> bytearray:
    image[offset : offset + len(name)] = name
    struct.pack_into(">QI", image, 8, offset, len(name))
    return image


def _extension(magic: int, payload: bytes, length: int | None = None) -> bytes:
    """A header extension padded to 8 bytes; ``length`` overrides the recorded length."""
    padded = payload + bytes(-len(payload) % 8)
    recorded = len(payload) if length is None else length
    return struct.pack(">II", magic, recorded) + padded


def _qcow2_backing_offset(image: bytes | bytearray) -> int:
    return int(struct.unpack_from(">Q", image, 8)[0])


def _padded_name(length: int, target: str = BASE_RAW) -> bytes:
    """A name of exactly ``length`` bytes that still resolves to ``target``: ``./././…target``."""
    prefix = length - len(target)
    if prefix < 0 or prefix % 2:
        raise ValueError(f"no ./-padded name of {length} bytes for {target!r}")
    return b"./" * (prefix // 2) + target.encode()


def _qcow2_long_name(directory: Path, name: str, length: int) -> Path:
    _raw(directory)
    image = _qcow2(_padded_name(length))
    return _write(directory / f"{name}.qcow2", image)


@_recipe(
    "qcow2-backing-name-1024",
    "image-formats.md §1.3 (backing_file_size 'must not be longer than 1023 bytes', "
    "qcow2.c 'Backing file name too long'); libvirt-rules.md §3.4 (size > 1023 reads as "
    "no backing, libvirt 34e317cfd, 2014)",
)
def _qcow2_backing_name_1024(directory: Path) -> Path:
    """qcow2 whose backing name is 1024 bytes, one past the limit of 1023.

    The name is ``./././…/base.raw`` and names a real file, so a reader without
    the limit (libvirt before 2014) follows it; qemu refuses to open the image
    and libvirt >= 1.2.4 silently sees no backing at all.
    """
    return _qcow2_long_name(directory, "qcow2-backing-name-1024", 1024)


@_recipe(
    "qcow2-backing-name-2000",
    "image-formats.md §1.3 and §2.8 (name over 1023 bytes); libvirt-rules.md §3.4",
)
def _qcow2_backing_name_2000(directory: Path) -> Path:
    """qcow2 whose backing name is 2000 bytes, well past the limit of 1023.

    Same rule as the 1024-byte case, away from the boundary: the name still
    fits in cluster 0 and in libvirt's header buffer, so only the limit applies.
    """
    return _qcow2_long_name(directory, "qcow2-backing-name-2000", 2000)


@_recipe(
    "qcow2-backing-name-beyond-libvirt-header",
    "image-formats.md §6 (name beyond 0x8200 but inside cluster 0); libvirt-rules.md §3.4 "
    "(offset > buflen reads as no backing; VIR_STORAGE_MAX_HEADER = 0x8200)",
)
def _qcow2_backing_name_beyond_libvirt_header(directory: Path) -> Path:
    """qcow2 whose backing name lies at offset 40000: inside cluster 0, past libvirt's 0x8200.

    qemu reads the whole first cluster and follows the name; libvirt reads only
    0x8200 bytes of a header and so sees a chain that ends at this image.
    """
    _raw(directory)
    image = _qcow2(backing_name=None, backing_format="raw")
    _qcow2_set_backing(image, BASE_RAW.encode(), 40000)
    return _write(directory / "qcow2-backing-name-beyond-libvirt-header.qcow2", image)


@_recipe(
    "qcow2-backing-name-past-eof",
    "libvirt-rules.md §3.4 (offset + size > buflen reads as no backing); qemu's block layer "
    "reads past the end of a file as zeros (observed with qemu-img 7.2)",
)
def _qcow2_backing_name_past_eof(directory: Path) -> Path:
    """qcow2 cut right after its backing name ``base.raw`` whose size field says 64 bytes.

    qemu reads past the end of the file as zeros, so the name is ``base.raw``
    and the chain goes on; libvirt finds offset + size beyond what it read and
    sees no backing.
    """
    _raw(directory)
    image = _qcow2()
    offset = _qcow2_backing_offset(image)
    struct.pack_into(">I", image, 16, 64)
    end = offset + len(BASE_RAW)
    return _write(directory / "qcow2-backing-name-past-eof.qcow2", image[:end])


def _qcow2_version(directory: Path, version: int) -> Path:
    _raw(directory)
    image = _qcow2()
    struct.pack_into(">I", image, 4, version)
    return _write(directory / f"qcow2-version-{version}.qcow2", image)


@_recipe(
    "qcow2-version-1",
    "image-formats.md §1.1 (qcow2 and qcow share the magic, told apart by version), §1.3 "
    "corruption matrix ('version 1: probed as qcow v1, then Cluster size must be between 512 "
    "and 64k'); libvirt-rules.md §3.3 (qcow is version 1)",
)
def _qcow2_version_1(directory: Path) -> Path:
    """A qcow2 v3 layout whose version field says 1: by magic and version it is qcow v1.

    qemu probes it as qcow and fails on the byte that qcow reads as
    cluster_bits; libvirt detects qcow and reads the shared backing fields.
    """
    return _qcow2_version(directory, 1)


@_recipe(
    "qcow2-version-4",
    "image-formats.md §1.1 (qemu's probe accepts any version >= 2), §1.3 ('Unsupported qcow2 "
    "version 4'), §6 (libvirt: magic ok, version wrong, raw); libvirt-rules.md §3.3",
)
def _qcow2_version_4(directory: Path) -> Path:
    """A qcow2 v3 layout whose version field says 4, a version that does not exist yet.

    qemu probes it as qcow2 and refuses to open it; libvirt's table accepts only
    versions 2 and 3, so a probing libvirt calls it raw.
    """
    return _qcow2_version(directory, 4)


def _qcow2_truncated(directory: Path, length: int) -> Path:
    _raw(directory)
    image = _qcow2()
    return _write(directory / f"qcow2-header-truncated-{length}.qcow2", image[:length])


@_recipe(
    "qcow2-header-truncated-50",
    "image-formats.md §1.3 (v3 header_length >= 104, 'qcow2 header too short'); "
    "libvirt-rules.md §3.4 (offset > buflen reads as no backing)",
)
def _qcow2_header_truncated_50(directory: Path) -> Path:
    """A qcow2 v3 image cut at 50 bytes, inside the v2 part of the header.

    qemu reads the missing bytes as zeros, so header_length is 0 and the header
    is too short; libvirt reads the 50 bytes there are and finds the backing
    name beyond them.
    """
    return _qcow2_truncated(directory, 50)


@_recipe(
    "qcow2-header-truncated-72",
    "image-formats.md §1.3 (the v2 header ends at 72; 'qcow2 header too short'); "
    "libvirt-rules.md §3.4",
)
def _qcow2_header_truncated_72(directory: Path) -> Path:
    """A qcow2 v3 image cut at 72 bytes, exactly where a v2 header would end.

    The v3 fields (features, header_length) are missing: too short for qemu, no
    backing for libvirt.
    """
    return _qcow2_truncated(directory, 72)


@_recipe(
    "qcow2-header-truncated-100",
    "image-formats.md §1.3 (header_length is the u32 at 100); libvirt-rules.md §3.4",
)
def _qcow2_header_truncated_100(directory: Path) -> Path:
    """A qcow2 v3 image cut at 100 bytes, just before the header_length field.

    Everything but header_length is there; qemu reads it as 0 (too short),
    libvirt sees no backing name inside the 100 bytes.
    """
    return _qcow2_truncated(directory, 100)


@_recipe(
    "qcow2-header-length-100",
    "image-formats.md §1.3 (v3 header_length >= 104, corruption matrix 'header_length 100'); "
    "libvirt-rules.md §3.4 (extensions are scanned from header_length)",
)
def _qcow2_header_length_100(directory: Path) -> Path:
    """A qcow2 v3 image whose header_length says 100, shorter than the v3 header.

    qemu refuses it. libvirt starts its extension scan at byte 100, meets an
    end marker in the header's own padding before the real backing-format
    extension at 112, and so records no backing format (the raw base is probed).
    """
    _raw(directory)
    image = _qcow2()
    struct.pack_into(">I", image, 100, 100)
    return _write(directory / "qcow2-header-length-100.qcow2", image)


@_recipe(
    "qcow2-header-length-over-cluster",
    "qcow2.c 'qcow2 header exceeds cluster size' (image-formats.md §1.3: header_length <= "
    "cluster size); libvirt-rules.md §3.4 (extension scan from header_length)",
)
def _qcow2_header_length_over_cluster(directory: Path) -> Path:
    """A qcow2 v3 image whose header_length is 65544, one step past its 64 KiB cluster.

    qemu refuses it; libvirt's extension scan starts past its 0x8200-byte buffer,
    finds no backing-format extension, and probes the backing.
    """
    _raw(directory)
    image = _qcow2()
    struct.pack_into(">I", image, 100, QCOW2_CLUSTER + 8)
    return _write(directory / "qcow2-header-length-over-cluster.qcow2", image)


@_recipe(
    "qcow2-extension-length-huge",
    "image-formats.md §1.3 ('Header extension too large', qcow2.c:243); libvirt-rules.md §3.4 "
    "(an extension running past the buffer ends the scan)",
)
def _qcow2_extension_length_huge(directory: Path) -> Path:
    """A qcow2 whose backing-format extension claims 0x7fffffff bytes of payload.

    qemu checks every length against the extension area and refuses the image;
    libvirt stops scanning, records no backing format and probes the backing.
    """
    _raw(directory)
    extension = _extension(qcow2.EXT_BACKING_FORMAT, b"raw", length=0x7FFFFFFF)
    image = _qcow2_with_extensions(extension, BASE_RAW.encode())
    return _write(directory / "qcow2-extension-length-huge.qcow2", image)


@_recipe(
    "qcow2-extension-unaligned-length",
    "libvirt-rules.md §3.4 ('libvirt advances by len exactly and does not round up to 8-byte "
    "alignment'); qcow2 spec: each extension is padded to 8 (image-formats.md §1.3)",
)
def _qcow2_extension_unaligned_length(directory: Path) -> Path:
    """A qcow2 whose extensions read one way padded (qemu) and another way unpadded (libvirt).

    An unknown extension of length 1 comes first. Stepping over it by 1 byte,
    as libvirt does, lands inside its padding, where a backing-format extension
    saying ``raw`` begins; its last 4 bytes are, to qemu, which steps by the
    padded 8, the type of an empty unknown extension, and then comes the real
    backing-format extension saying ``qcow2``. libvirt's next step meets an end
    marker. The backing is a qcow2 image: qemu opens it as qcow2, libvirt as raw.
    """
    _write(directory / "base.qcow2", _qcow2(backing_name=None, backing_format=None))
    unknown = _extension(QCOW2_UNKNOWN_EXTENSION, b"!")
    libvirt_next = 8 + 1
    qemu_next = len(unknown)
    hidden = struct.pack(">II", qcow2.EXT_BACKING_FORMAT, 3) + b"raw"
    split = qemu_next - libvirt_next
    area = bytearray(unknown)
    area[libvirt_next:qemu_next] = hidden[:split]
    area += hidden[split:] + struct.pack(">I", 0)
    area += _extension(qcow2.EXT_BACKING_FORMAT, b"qcow2")
    image = _qcow2_with_extensions(bytes(area), b"base.qcow2")
    return _write(directory / "qcow2-extension-unaligned-length.qcow2", image)


@_recipe(
    "qcow2-backing-format-duplicate",
    "image-formats.md §1.3 (each extension at most once; qemu does not enforce it, the last "
    "one wins: 'Image is not in qcow2 format'); libvirt-rules.md §3.4 (libvirt steps over an "
    "extension by its length, unpadded)",
)
def _qcow2_backing_format_duplicate(directory: Path) -> Path:
    """A qcow2 with two backing-format extensions, ``raw`` then ``qcow2``, over a raw base.

    The spec allows one. qemu keeps the last and opens the raw base as qcow2,
    which fails. libvirt steps over ``raw`` by its 3 unpadded bytes, meets an
    end marker in the padding and keeps ``raw``: the two disagree on the format.
    """
    _raw(directory)
    extensions = _extension(qcow2.EXT_BACKING_FORMAT, b"raw") + _extension(
        qcow2.EXT_BACKING_FORMAT, b"qcow2"
    )
    image = _qcow2_with_extensions(extensions, BASE_RAW.encode())
    return _write(directory / "qcow2-backing-format-duplicate.qcow2", image)


@_recipe(
    "qcow2-backing-format-length-16",
    "image-formats.md §1.3 (bs->backing_format is char[16]: 'ERROR: ext_backing_format: "
    "len=16 too large (>=16)'); libvirt-rules.md §3.4 (the string is read as a C string)",
)
def _qcow2_backing_format_length_16(directory: Path) -> Path:
    """A qcow2 whose backing-format extension is 16 bytes: ``raw`` and 13 NULs.

    qemu's buffer holds 15 characters and a NUL, so it refuses the image;
    libvirt copies the payload, reads it as the C string ``raw`` and follows.
    """
    _raw(directory)
    extension = _extension(qcow2.EXT_BACKING_FORMAT, b"raw".ljust(16, b"\0"))
    image = _qcow2_with_extensions(extension, BASE_RAW.encode())
    return _write(directory / "qcow2-backing-format-length-16.qcow2", image)


@_recipe(
    "qcow2-virtual-size-huge",
    "qcow2.c qcow2_do_open ('Image is too big': the L1 index of the size exceeds INT_MAX; "
    "observed with qemu-img 7.2); libvirt-rules.md §3.3 (capacity is the u64 at 24)",
)
def _qcow2_virtual_size_huge(directory: Path) -> Path:
    """A qcow2 whose virtual size is 2^63 - 512 bytes, with a one-entry L1 table.

    qemu refuses an image its L1 table could never address; libvirt reads the
    capacity as a plain u64 and goes on to the backing.
    """
    _raw(directory)
    image = _qcow2()
    struct.pack_into(">Q", image, 24, (1 << 63) - 512)
    return _write(directory / "qcow2-virtual-size-huge.qcow2", image)


def _qcow2_odd_name(directory: Path, name: str, backing: bytes, target: bytes) -> Path:
    _raw(directory, target)
    return _write(directory / f"{name}.qcow2", _qcow2(backing))


@_recipe(
    "qcow2-backing-name-nul",
    "image-formats.md §1.3 ('An embedded NUL truncates it: base\\0xyz is reported as base'); "
    "libvirt-rules.md §3.4 (the name is copied and used as a C string)",
)
def _qcow2_backing_name_nul(directory: Path) -> Path:
    """A qcow2 whose 8-byte backing name is ``base\\0xyz``; a raw file ``base`` exists.

    Both readers use the name as a C string, so the chain goes to ``base``; a
    reader that keeps all 8 bytes names a file that does not exist.
    """
    return _qcow2_odd_name(directory, "qcow2-backing-name-nul", b"base\0xyz", b"base")


@_recipe(
    "qcow2-backing-name-newline",
    "image-formats.md §6 scenario 3 (names); a name is bytes, any byte but NUL and '/' is a "
    "file name character on Linux",
)
def _qcow2_backing_name_newline(directory: Path) -> Path:
    """A qcow2 whose backing name holds a newline, ``base\\n.raw``; that file exists.

    Line-oriented readers (logs, ``qemu-img info`` in human form) split it; the
    chain itself must go on to the file of that exact name.
    """
    return _qcow2_odd_name(directory, "qcow2-backing-name-newline", b"base\n.raw", b"base\n.raw")


@_recipe(
    "qcow2-backing-name-non-utf8",
    "image-formats.md §6 scenario 3 (names); qemu's JSON output and libvirt's XML are UTF-8, "
    "a name on disk is bytes",
)
def _qcow2_backing_name_non_utf8(directory: Path) -> Path:
    """A qcow2 whose backing name holds a byte that is not UTF-8, ``base\\xff.raw``.

    The file exists under that byte name: the chain goes on, and what a reader
    prints for the name is its own choice (qemu's JSON replaces the byte).
    """
    return _qcow2_odd_name(
        directory, "qcow2-backing-name-non-utf8", b"base\xff.raw", b"base\xff.raw"
    )


@_recipe(
    "qcow2-data-file-host-file",
    "CVE-2024-32498 (OSSA-2024-001): qcow2 external data file naming a host file; "
    "image-formats.md §0 item 8, §1.3 (incompatible bit 2, extension 0x44415441, "
    "data_file_raw); libvirt-rules.md §3.10 (libvirt's prober does not read it)",
)
def _qcow2_data_file_host_file(directory: Path) -> Path:
    """A qcow2 whose external data file is ``<dir>/host-secret.txt``, mapped raw 1:1.

    Incompatible bit 2, the data-file extension and autoclear data_file_raw are
    set and the one guest cluster is mapped, so a guest reading the disk reads
    the host file. No backing file: a checker looking only at backing names
    passes it.
    """
    secret = _host_secret(directory)
    image = bytearray(
        qcow2.encode(Qcow2Image(QCOW2_CLUSTER, data_file=os.fsencode(secret.resolve())))
    )
    autoclear = struct.unpack_from(">Q", image, 88)[0]
    struct.pack_into(">Q", image, 88, autoclear | qcow2.AUTOCLEAR_DATA_FILE_RAW)
    l1_offset = int(struct.unpack_from(">Q", image, 40)[0])
    refcount_block = 2 * QCOW2_CLUSTER
    l2_offset = len(image)
    struct.pack_into(">Q", image, l1_offset, l2_offset | QCOW2_L2_COPIED)
    struct.pack_into(">H", image, refcount_block + 2 * (l2_offset // QCOW2_CLUSTER), 1)
    l2 = bytearray(QCOW2_CLUSTER)
    struct.pack_into(">Q", l2, 0, QCOW2_L2_COPIED)
    return _write(directory / "qcow2-data-file-host-file.qcow2", bytes(image) + bytes(l2))


# -- a raw disk a guest wrote a qcow2 header into -------------------------------------


def _guest_raw_with_qcow2_header(directory: Path) -> Path:
    """guest.raw: 1 MiB whose first clusters a guest filled with a qcow2 naming the secret."""
    secret = _host_secret(directory)
    header = _qcow2(os.fsencode(secret.resolve()), "raw")
    return _write(directory / "guest.raw", bytes(header), MIB)


@_recipe(
    "raw-guest-qcow2-header-format-recorded",
    "CVE-2008-2004, CVE-2010-2238 (probing a backing instead of using the recorded format); "
    "image-formats.md §2.6 ('With the format recorded (-F raw), the chain stops')",
)
def _raw_guest_qcow2_header_format_recorded(directory: Path) -> Path:
    """A qcow2 recording ``-F raw`` over a raw disk whose guest wrote a qcow2 header into it.

    The safe case: the recorded format wins over what the bytes look like, so
    the chain ends at the raw disk and the host file is never named.
    """
    _guest_raw_with_qcow2_header(directory)
    image = _qcow2(b"guest.raw", "raw")
    return _write(directory / "raw-guest-qcow2-header-format-recorded.qcow2", image)


@_recipe(
    "raw-guest-qcow2-header-format-probed",
    "CVE-2008-2004, CVE-2010-2238; image-formats.md §0 item 7 and §2.6 (attack demo: the raw "
    "base probed as qcow2, backing file the host file); libvirt-rules.md §3.5 (>= 6.1 refuses "
    "a probed backing that has a backing of its own)",
)
def _raw_guest_qcow2_header_format_probed(directory: Path) -> Path:
    """A qcow2 recording no backing format over the same guest-written raw disk.

    The raw disk is probed: qemu sees a qcow2 whose backing is the host file
    and follows it; modern libvirt refuses a probed image that has a backing;
    libvirt 0.8.3-4.4 without probing treats it as raw.
    """
    _guest_raw_with_qcow2_header(directory)
    image = _qcow2(b"guest.raw", None)
    return _write(directory / "raw-guest-qcow2-header-format-probed.qcow2", image)


# -- qed -------------------------------------------------------------------------------


def qed_layout(
    backing_name: bytes = BASE_RAW.encode(),
    *,
    name_offset: int = QED_HEADER.size,
    name_size: int | None = None,
    image_size: int = MIB,
) -> bytes:
    """A QED image as qemu-img lays it out: 64 KiB clusters, 4-cluster L1, name at 64."""
    features = QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE
    header = QED_HEADER.pack(
        b"QED\0",
        QED_CLUSTER,
        QED_TABLE_SIZE,
        1,
        features,
        0,
        0,
        QED_CLUSTER,
        image_size,
        name_offset,
        len(backing_name) if name_size is None else name_size,
    )
    image = bytearray(QED_CLUSTER * (1 + QED_TABLE_SIZE))
    image[: len(header)] = header
    image[QED_HEADER.size : QED_HEADER.size + len(backing_name)] = backing_name
    return bytes(image)


@_recipe(
    "qed-backing-offset-out-of-bounds",
    "image-formats.md §1.5 ('The name must lie within header_size*cluster_size': 'QED backing "
    "filename offset is invalid'); libvirt-rules.md §3.4 (QED: same bounds checks as qcow)",
)
def _qed_backing_offset_out_of_bounds(directory: Path) -> Path:
    """A QED whose backing_filename_offset is 0x20000, past its one-cluster header.

    qemu refuses it; libvirt finds the offset beyond its buffer and sees no backing.
    """
    _raw(directory)
    image = qed_layout(name_offset=2 * QED_CLUSTER)
    return _write(directory / "qed-backing-offset-out-of-bounds.qed", image)


@_recipe(
    "qed-backing-size-out-of-bounds",
    "image-formats.md §1.5 ('QED backing filename offset is invalid'); libvirt-rules.md §3.4",
)
def _qed_backing_size_out_of_bounds(directory: Path) -> Path:
    """A QED whose name ``base.raw`` sits at 64 but whose backing_filename_size says 65536.

    offset + size runs past the header cluster: qemu refuses it; libvirt finds it
    past its buffer and sees no backing.
    """
    _raw(directory)
    image = qed_layout(name_size=QED_CLUSTER)
    return _write(directory / "qed-backing-size-out-of-bounds.qed", image)


@_recipe(
    "qed-image-size-unaligned",
    "qed.c qed_is_image_size_valid (image_size must be a multiple of 512; the open fails "
    "with EINVAL); libvirt-rules.md §3.3 (QED capacity is the u64 at 48)",
)
def _qed_image_size_unaligned(directory: Path) -> Path:
    """A QED whose image_size is 1 MiB + 1, not a multiple of the 512-byte sector.

    qemu refuses it (Invalid argument); libvirt reads the capacity as it is and
    follows the backing.
    """
    _raw(directory)
    image = qed_layout(image_size=MIB + 1)
    return _write(directory / "qed-image-size-unaligned.qed", image)


# -- qcow (v1) -------------------------------------------------------------------------


def qcow_layout(backing_name: bytes, *, cluster_bits: int = 9, virtual_size: int = MIB) -> bytes:
    """A qcow v1 image as qemu-img lays it out: name at 48, L1 table after it, 512-aligned."""
    l2_bits = 12
    l1_offset = -(-(QCOW_HEADER.size + len(backing_name)) // 8) * 8
    l1_size = max(1, -(-virtual_size // (1 << (cluster_bits + l2_bits))))
    header = QCOW_HEADER.pack(
        b"QFI\xfb",
        1,
        QCOW_HEADER.size,
        len(backing_name),
        0,
        virtual_size,
        cluster_bits,
        l2_bits,
        0,
        0,
        l1_offset,
    )
    length = l1_offset + -(-l1_size * 8 // 512) * 512
    image = bytearray(length)
    image[: QCOW_HEADER.size] = header
    image[QCOW_HEADER.size : QCOW_HEADER.size + len(backing_name)] = backing_name
    return bytes(image)


@_recipe(
    "qcow-backing-name-1024",
    "image-formats.md §1.4 (qcow.c:289 'Backing file name too long' above 1023); "
    "libvirt-rules.md §3.4 (qcowXGetBackingStore: size > 1023 reads as no backing)",
)
def _qcow_backing_name_1024(directory: Path) -> Path:
    """A qcow v1 whose backing name is 1024 bytes (``./././…/base.raw``).

    The same limit as qcow2 in the older format: qemu refuses the image,
    libvirt >= 1.2.4 sees no backing, older libvirt follows the name.
    """
    _raw(directory)
    return _write(directory / "qcow-backing-name-1024.qcow", qcow_layout(_padded_name(1024)))


@_recipe(
    "qcow-cluster-bits-bad",
    "image-formats.md §1.4 (cluster_bits 9…16: 'Cluster size must be between 512 and 64k'); "
    "libvirt-rules.md §3.4 (libvirt reads only the backing fields)",
)
def _qcow_cluster_bits_bad(directory: Path) -> Path:
    """A qcow v1 whose cluster_bits is 17 (128 KiB clusters), one past qemu's range.

    qemu refuses the image; libvirt never looks at cluster_bits and follows the
    backing name.
    """
    _raw(directory)
    image = qcow_layout(BASE_RAW.encode(), cluster_bits=17)
    return _write(directory / "qcow-cluster-bits-bad.qcow", image)


# -- vmdk ------------------------------------------------------------------------------


def vmdk_sparse_layout(descriptor: bytes, capacity_sectors: int = 2048) -> bytes:
    """A monolithicSparse VMDK as qemu-img lays out 1 MiB: header, descriptor, tables, 64 KiB."""
    sector = 512
    header = VMDK_HEADER.pack(
        b"KDMV", 1, 3, capacity_sectors, 128, 1, 20, 512, 0x15, 0x1A, 0x80, 0, b"\n \r\n", 0
    )
    if len(descriptor) > 20 * sector:
        raise ValueError("descriptor longer than its 20 sectors")
    image = bytearray(0x80 * sector)
    image[: len(header)] = header
    image[sector : sector + len(descriptor)] = descriptor
    struct.pack_into("<I", image, 0x15 * sector, 0x16)
    struct.pack_into("<I", image, 0x1A * sector, 0x1B)
    return bytes(image)


def _vmdk_descriptor(create_type: str, extents: list[str], parent: bytes | None = None) -> bytes:
    lines = [
        b"# Disk DescriptorFile",
        b"version=1",
        b"CID=5bf6929a",
        b"parentCID=ffffffff" if parent is None else b"parentCID=5bf6929a",
        b'createType="' + create_type.encode() + b'"',
    ]
    if parent is not None:
        lines.append(b'parentFileNameHint="' + parent + b'"')
    lines += [b"", b"# Extent description", *(line.encode() for line in extents), b""]
    return b"\n".join(lines)


@_recipe(
    "vmdk-extent-absolute-host-path",
    "CVE-2022-47951 (OSSA-2023-002, arbitrary file access through a VMDK flat descriptor); "
    "image-formats.md §1.6 ('Absolute names are accepted'), §1.2 and §6 (libvirt has no "
    "text-descriptor probe)",
)
def _vmdk_extent_absolute_host_path(directory: Path) -> Path:
    """A monolithicFlat VMDK descriptor whose only extent is ``<dir>/host-secret.txt``.

    qemu accepts the absolute extent and the guest reads the host file; libvirt
    probes a text descriptor as raw and never sees the extent.
    """
    secret = _host_secret(directory).resolve()
    descriptor = _vmdk_descriptor("monolithicFlat", [f'RW 2048 FLAT "{secret}" 0'])
    return _write(directory / "vmdk-extent-absolute-host-path.vmdk", descriptor)


@_recipe(
    "vmdk-sparse-parent-absolute",
    "image-formats.md §1.6 (vmdk_parent_open forces backing_format 'vmdk'; libvirt searches "
    "parentFileNameHint after 0x200 and leaves the format to probing), §6 ('VMDK parent "
    "format: forced vmdk vs AUTO'); libvirt-rules.md §3.4",
)
def _vmdk_sparse_parent_absolute(directory: Path) -> Path:
    """A monolithicSparse VMDK whose parentFileNameHint is the absolute ``<dir>/host-secret.txt``.

    qemu forces the parent's format to vmdk, so a host file that is not a VMDK
    ends the chain in an error; libvirt probes the parent, finds raw with no
    backing, and accepts it.
    """
    secret = _host_secret(directory).resolve()
    name = "vmdk-sparse-parent-absolute.vmdk"
    descriptor = _vmdk_descriptor(
        "monolithicSparse", [f'RW 2048 SPARSE "{name}"'], os.fsencode(secret)
    )
    return _write(directory / name, vmdk_sparse_layout(descriptor))


@_recipe(
    "vmdk-descriptor-blank-line",
    "image-formats.md §1.1 (vmdk_probe: an empty line before 'version=' makes the probe fail; "
    "a line of one space does not), §6 ('VMDK text descriptor as top')",
)
def _vmdk_descriptor_blank_line(directory: Path) -> Path:
    """A valid monolithicFlat VMDK descriptor with a blank line between comment and version.

    qemu's text probe gives up at the empty line, so without ``-f vmdk`` the
    descriptor is raw; with ``-f vmdk`` it opens. libvirt probes it as raw anyway.
    """
    _raw(directory, "vmdk-descriptor-blank-line-flat.raw")
    descriptor = _vmdk_descriptor(
        "monolithicFlat", ['RW 2048 FLAT "vmdk-descriptor-blank-line-flat.raw" 0']
    )
    descriptor = descriptor.replace(b"# Disk DescriptorFile\n", b"# Disk DescriptorFile\n\n", 1)
    return _write(directory / "vmdk-descriptor-blank-line.vmdk", descriptor)


# -- cow (User-Mode Linux) -------------------------------------------------------------


@_recipe(
    "cow-backing-name",
    "image-formats.md §1.7 (cow: OOOM, version 2, backing_file[1024] at 8; QEMU deleted the "
    "driver in commit 550830f935), §6; libvirt-rules.md §3.3 (cowGetBackingStore)",
)
def _cow_backing_name(directory: Path) -> Path:
    """A UML cow v2 image naming ``base.raw``: libvirt still parses it, qemu calls it raw.

    qemu has no cow driver any more and sees a raw file with no backing; a
    libvirt told (or probing) that it is cow follows the name, format unrecorded.
    """
    _raw(directory)
    header = COW_HEADER.pack(b"OOOM", 2, BASE_RAW.encode(), 0, MIB, 512)
    return _write(directory / "cow-backing-name.cow", header, 4096)


__all__ = [
    "HOST_SECRET",
    "HOST_SECRET_TEXT",
    "RECIPES",
    "Recipe",
    "craft",
    "qcow_layout",
    "qed_layout",
    "vmdk_sparse_layout",
]
