"""A declarative, JSON-serialisable description of a chain of images on disk.

A ``ChainSpec`` names its layers top first. Each layer says its format, how
its header names its backing (verbatim: relative, ``./`` or ``../`` spelled,
absolute, ``json:`` or a network string) and which backing format it records
(a format, a protocol name such as ``file`` or ``nbd``, or none at all).
Absolute names are written with the ``$DIR`` token, which the builder
replaces by the directory the chain is built in. Directories, symlinks and
files that are deliberately missing complete the picture; loops are layers
whose backings lead back to a layer above.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

DIR_TOKEN = "$DIR"
"""Stands for the absolute directory a chain is built in."""
DEFAULT_SIZE = 1 << 20
FORMATS = frozenset({"qcow2", "qcow", "qed", "vmdk", "raw"})
QCOW2_COMPATS = frozenset({"0.10", "1.1"})


class SpecError(ValueError):
    """A spec that cannot describe a chain (unknown format, duplicate names, ...)."""


@dataclass(frozen=True)
class LayerSpec:
    """One image. ``name`` is its path relative to the chain's directory."""

    name: str
    format: str = "qcow2"
    backing: str | None = None
    """The backing name as the header records it, verbatim ($DIR for the build directory)."""
    backing_format: str | None = None
    """The recorded backing format: a format, a protocol name, or None for none recorded."""
    compat: str | None = None
    """qcow2 only: "0.10" (version 2) or "1.1" (version 3, the default)."""
    size: int = DEFAULT_SIZE
    missing: bool = False
    """Named by another layer but deliberately not created."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise SpecError(f"layer {self.name!r}: unknown format {self.format!r}")
        if self.compat is not None and (self.format != "qcow2" or self.compat not in QCOW2_COMPATS):
            raise SpecError(f"layer {self.name!r}: compat {self.compat!r} is for qcow2 only")
        if self.format == "raw" and self.backing is not None:
            raise SpecError(f"layer {self.name!r}: a raw image has no backing")
        if not self.name or self.name.startswith("/") or ".." in self.name.split("/"):
            raise SpecError(f"layer name {self.name!r} must be a path inside the chain directory")


@dataclass(frozen=True)
class SymlinkSpec:
    """A symbolic link ``link`` (inside the chain directory) whose text is ``target``."""

    link: str
    target: str


@dataclass(frozen=True)
class ChainSpec:
    """A chain to build: layers top first, plus directories and symlinks.

    ``top`` is the path a prober is pointed at; by default the first layer, but
    it may be a symlink to it.
    """

    name: str
    layers: tuple[LayerSpec, ...]
    symlinks: tuple[SymlinkSpec, ...] = ()
    directories: tuple[str, ...] = ()
    top: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.layers:
            raise SpecError(f"chain {self.name!r} has no layers")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise SpecError(f"chain {self.name!r} names a layer twice")
        if not self.top:
            object.__setattr__(self, "top", self.layers[0].name)

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": [vars(layer).copy() for layer in self.layers],
            "symlinks": [vars(link).copy() for link in self.symlinks],
            "directories": list(self.directories),
            "top": self.top,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ChainSpec:
        try:
            layers = tuple(LayerSpec(**layer) for layer in document["layers"])
            symlinks = tuple(SymlinkSpec(**link) for link in document.get("symlinks", ()))
            return cls(
                name=document["name"],
                layers=layers,
                symlinks=symlinks,
                directories=tuple(document.get("directories", ())),
                top=document.get("top", ""),
                description=document.get("description", ""),
            )
        except (KeyError, TypeError) as error:
            raise SpecError(f"not a chain spec: {error}") from None

    def digest(self) -> str:
        """A stable hash of everything that shapes the files (not the description)."""
        document = self.to_json()
        document.pop("description")
        encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]


def linear(
    name: str,
    formats: list[str],
    *,
    record_formats: bool = True,
    absolute: bool = False,
    size: int = DEFAULT_SIZE,
    description: str = "",
) -> ChainSpec:
    """A straight chain top first: ``formats[0]`` on top of ``formats[1]`` ... on the base.

    Layers are named ``layer-N.<format>``; each names the next relatively (or
    with $DIR when ``absolute``) and records its format unless told not to.
    """
    names = [f"layer-{index}.{_suffix(fmt)}" for index, fmt in enumerate(formats)]
    layers = []
    for index, fmt in enumerate(formats):
        below = index + 1 < len(formats)
        backing = None
        if below:
            backing = f"{DIR_TOKEN}/{names[index + 1]}" if absolute else names[index + 1]
        recorded = _base_format(formats[index + 1]) if below and record_formats else None
        layers.append(
            LayerSpec(
                names[index],
                _base_format(fmt),
                backing,
                recorded,
                compat=_compat(fmt),
                size=size,
            )
        )
    return ChainSpec(name, tuple(layers), description=description)


def deep(name: str, depth: int, *, size: int = DEFAULT_SIZE) -> ChainSpec:
    """``depth`` qcow2 layers, each naming the next relatively with its format recorded."""
    return linear(name, ["qcow2"] * depth, size=size, description=f"{depth} qcow2 layers")


def loop(name: str, length: int, *, alias: bool = False) -> ChainSpec:
    """``length`` qcow2 images in a ring; with ``alias`` a self loop spelled ``./name``."""
    if alias:
        layer = LayerSpec("self.qcow2", "qcow2", "./self.qcow2", "qcow2")
        return ChainSpec(name, (layer,), description="an image naming itself as ./self.qcow2")
    names = [f"loop-{index}.qcow2" for index in range(length)]
    layers = tuple(
        LayerSpec(names[index], "qcow2", names[(index + 1) % length], "qcow2")
        for index in range(length)
    )
    return ChainSpec(name, layers, description=f"a loop of {length} image(s)")


def _base_format(fmt: str) -> str:
    return "qcow2" if fmt.startswith("qcow2") else fmt


def _compat(fmt: str) -> str | None:
    """``qcow2-v2`` in a format list means qcow2 compat 0.10."""
    if fmt == "qcow2-v2":
        return "0.10"
    return None


def _suffix(fmt: str) -> str:
    return _base_format(fmt)
