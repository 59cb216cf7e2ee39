"""Values shared by the whole suite: layers, chains and chain errors, with their JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from simulator.values import quick_init


class LayerType(StrEnum):
    """Where a layer lives; mirrors libvirt's virStorageType for the kinds a chain can hold."""

    FILE = "file"
    BLOCK = "block"
    DIR = "dir"
    NETWORK = "network"


class ErrorCode(StrEnum):
    """Stable error codes. A code never changes meaning; new failures get new codes."""

    NOT_FOUND = "not-found"
    """The top image does not exist."""
    BACKING_MISSING = "backing-missing"
    """A backing image named by a header does not exist."""
    PERMISSION_DENIED = "permission-denied"
    """An image exists but cannot be opened or read."""
    READ_FAILED = "read-failed"
    """Opening or reading an image failed for another reason (I/O error, name too long, ...)."""
    BACKING_LOOP = "backing-loop"
    """A loop was detected as such (a name or file seen before)."""
    TOO_DEEP = "too-deep"
    """A depth limit was reached; in modern libvirt this is also how a loop ends."""
    BACKING_FORMAT_UNSPECIFIED = "backing-format-unspecified"
    """A backing image's format was not recorded and probing it was refused."""
    HEADER_INVALID = "header-invalid"
    """A header the active rules cannot accept (bad version, lying offsets, wrong magic)."""
    UNKNOWN_FORMAT = "unknown-format"
    """A format name the rules do not know."""
    BACKING_NAME_INVALID = "backing-name-invalid"
    """A backing string that cannot be parsed (malformed URI, json:, protocol)."""
    NETWORK_BACKING = "network-backing"
    """The chain continues on a network server that the prober does not contact."""


class ChainError(Exception):
    """A chain that cannot be determined, with a stable code and a message a person can act on."""

    def __init__(self, code: ErrorCode, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChainError):
            return NotImplemented
        return (self.code, self.message, self.path) == (other.code, other.message, other.path)

    def __hash__(self) -> int:
        return hash((self.code, self.message, self.path))

    def __repr__(self) -> str:
        return f"ChainError({self.code.value!r}, {self.message!r}, path={self.path!r})"

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.path is not None:
            result["path"] = self.path
        return result


@dataclass(frozen=True)
class NetworkHost:
    """One server of a network layer (libvirt's virStorageNetHostDef)."""

    name: str | None = None
    port: int | None = None
    transport: str = "tcp"
    socket: str | None = None

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"transport": self.transport}
        if self.name is not None:
            result["name"] = self.name
        if self.port is not None:
            result["port"] = self.port
        if self.socket is not None:
            result["socket"] = self.socket
        return result


@quick_init
@dataclass(frozen=True)
class Layer:
    """One element of a backing chain, top first.

    ``filename`` is the name the rules opened (for a network layer, the path or
    volume on the server); ``backing_raw`` and ``backing_format_raw`` are what
    the header records, verbatim.
    """

    filename: str
    format: str
    type: LayerType = LayerType.FILE
    virtual_size: int | None = None
    backing_raw: str | None = None
    backing_full: str | None = None
    backing_format_raw: str | None = None
    relative_path: str | None = None
    """How the layer above named this one, when it named it relatively (libvirt's relPath)."""
    index: int = 0
    """libvirt's backing index: 0 for the top, then 1, 2, ... as ``vda[N]`` addresses them."""
    protocol: str | None = None
    hosts: tuple[NetworkHost, ...] = ()
    data_file: str | None = None
    encrypted: bool = False

    def to_json(self) -> dict[str, Any]:
        """qemu-img's key names where the meaning is the same, ours for the rest."""
        result: dict[str, Any] = {
            "filename": self.filename,
            "format": self.format,
            "type": self.type.value,
            "index": self.index,
        }
        if self.virtual_size is not None:
            result["virtual-size"] = self.virtual_size
        if self.backing_raw is not None:
            result["backing-filename"] = self.backing_raw
        if self.backing_full is not None:
            result["full-backing-filename"] = self.backing_full
        if self.backing_format_raw is not None:
            result["backing-filename-format"] = self.backing_format_raw
        if self.relative_path is not None:
            result["relative-path"] = self.relative_path
        if self.protocol is not None:
            result["protocol"] = self.protocol
        if self.hosts:
            result["hosts"] = [host.to_json() for host in self.hosts]
        if self.data_file is not None:
            result["data-file"] = self.data_file
        if self.encrypted:
            result["encrypted"] = True
        return result


@dataclass(frozen=True)
class Chain:
    """A disk's backing chain, top first.

    ``terminated`` is libvirt's distinction: True when the last layer is known
    to have no backing (an explicit terminator), False when what lies below the
    last layer is unknown (a network backing, inline credentials, a directory).
    """

    layers: tuple[Layer, ...]
    terminated: bool = True
    header_bytes_read: int = field(default=0, compare=False)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def top(self) -> Layer:
        return self.layers[0]

    def to_json(self) -> list[dict[str, Any]]:
        """The layers as JSON objects; each says whether what lies below it is known."""
        last = len(self.layers) - 1
        result = []
        for position, layer in enumerate(self.layers):
            item = layer.to_json()
            item["backing-known"] = position < last or self.terminated
            result.append(item)
        return result
