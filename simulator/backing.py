"""A backing string, as an image header records it, turned into a location the way libvirt does.

The rules are those of libvirt 9.x (checked against 9.0.0 built with libxml2 2.9.14 and
yajl 2.1.0): ``virStorageSourceNewFromBackingAbsolute`` in ``storage_source.c`` and the
parsers of ``storage_source_backingstore.c``. The string is read as C reads it, so it ends
at its first NUL character. Everything here is pure: no file is looked at, and nothing of
the project is imported except :mod:`simulator.model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from simulator.model import NetworkHost

__all__ = [
    "BackingLocation",
    "BackingNameError",
    "LocationKind",
    "NetworkHost",
    "is_file_name",
    "is_relative",
    "parse_backing",
    "resolve_relative_libvirt",
    "resolve_relative_qemu",
]


class LocationKind(StrEnum):
    """What a backing string names; a subset of libvirt's virStorageType."""

    FILE = "file"
    """A local path, absolute or relative as written."""
    NETWORK = "network"
    """A server and something on it (nbd, rbd, iscsi, http(s), ftp(s), tftp, gluster, ...)."""
    DIR = "dir"
    """A directory presented as a disk: ``fat:<dir>``."""


@dataclass(frozen=True)
class BackingLocation:
    """Where a backing string points (libvirt's virStorageSource as the parsers fill it).

    ``path`` is the file path as written, or for a network location the path, export,
    volume or image on the server. ``format`` is a format the string itself implies:
    ``"fat"`` for ``fat:`` and ``"raw"`` for a ``json:`` raw wrapper (libvirt replaces
    the format with the header's recorded backing format afterwards, in
    ``virStorageSourceNewFromBacking``). ``inline_auth`` is libvirt's return value 1:
    the string parsed, but it carried credentials, so the chain stops there, unterminated.
    ``slice_offset``/``slice_size`` are the raw driver's ``<slices>``; when one of the two
    keys is given the other is 0, as in libvirt's zeroed slice.
    """

    kind: LocationKind
    path: str | None
    protocol: str | None = None
    hosts: tuple[NetworkHost, ...] = ()
    format: str | None = None
    inline_auth: bool = False
    volume: str | None = None
    slice_offset: int | None = None
    slice_size: int | None = None


class BackingNameError(ValueError):
    """A backing string libvirt refuses; the message is libvirt's error text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------
# C strings


def c_string(text: str) -> str:
    """The text up to its first NUL, as a C function sees it."""
    return text.split("\0", 1)[0]


# ---------------------------------------------------------------------------
# File names


def is_file_name(backing: str) -> bool:
    """Mirrors virStorageSourceBackinStoreStringIsFile: no ':' before the first '/'."""
    backing = c_string(backing)
    colon = backing.find(":")
    slash = backing.find("/")
    return not (colon >= 0 and (slash < 0 or colon < slash))


def is_relative(backing: str) -> bool:
    """Mirrors virStorageSourceBackinStoreStringIsRelative: a file name not starting with '/'."""
    backing = c_string(backing)
    return not backing.startswith("/") and is_file_name(backing)


def _path_get_dirname(file_name: str) -> str:
    """GLib's ``g_path_get_dirname`` on POSIX."""
    base = file_name.rfind("/")
    if base < 0:
        return "."
    while base > 0 and file_name[base] == "/":
        base -= 1
    return file_name[: base + 1]


def resolve_relative_libvirt(parent_path: str, relative: str) -> str:
    """Mirrors virStorageSourceNewFromBackingRelative: the parent's dirname, '/', the name.

    There is no normalisation: ``top.qcow2`` + ``base`` gives ``./base``.
    """
    dirname = _path_get_dirname(c_string(parent_path))
    relative = c_string(relative)
    if dirname != "/":
        return f"{dirname}/{relative}"
    return f"/{relative}"


def resolve_relative_qemu(overlay_filename: str, backing: str) -> str:
    """Mirrors qemu's bdrv_make_absolute_filename with bdrv_dirname of a plain file.

    A name with a protocol (':' before any '/') or starting with '/' is kept verbatim;
    any other is appended to the overlay's filename up to and including its last '/'.
    The overlay's ``file:`` prefix is dropped first, as qemu's file driver drops it.
    An empty backing name names no file and raises :class:`ValueError`.
    """
    overlay_filename = c_string(overlay_filename).removeprefix("file:")
    backing = c_string(backing)
    if not backing:
        raise ValueError("an empty backing name names no file")
    colon, slash = backing.find(":"), backing.find("/")
    if (colon >= 0 and (slash < 0 or colon < slash)) or slash == 0:
        return backing
    return overlay_filename[: overlay_filename.rfind("/") + 1] + backing


# ---------------------------------------------------------------------------
# The entry point


def parse_backing(backing: str) -> BackingLocation:
    """Mirrors virStorageSourceNewFromBackingAbsolute; raises :class:`BackingNameError`.

    A file name stays as written; ``fat:`` names a directory; ``json:`` goes to the JSON
    parser, a string containing ``://`` to the URI parser, anything else to the legacy
    colon parser. Network locations get libvirt's default ports.
    """
    backing = c_string(backing)
    if is_file_name(backing):
        return BackingLocation(kind=LocationKind.FILE, path=backing)
    if backing.startswith("fat:"):
        return BackingLocation(kind=LocationKind.DIR, path=backing[len("fat:") :], format="fat")
    from simulator.backing_network import parse_network

    return parse_network(backing)
