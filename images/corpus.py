"""The corpus: every image the suite needs, built into one directory with a manifest.

Each entry lives in its own subdirectory, ``chains/<name>`` for a ChainSpec
and ``crafted/<name>`` for a crafted recipe. An entry is finished when its
marker is written, so an interrupted build resumes where it stopped; a
subdirectory that holds files the corpus did not make is never touched.
``manifest.json`` records, for every image, how it was made.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from images import craft, spec
from images.build import BuildError, BuildMethod, build
from images.spec import DIR_TOKEN, ChainSpec, LayerSpec, SymlinkSpec

MANIFEST = "manifest.json"
CRAFTED_MARKER = ".chainsuite-crafted"
MANIFEST_VERSION = 1


class CorpusError(Exception):
    """The corpus cannot be built as asked (a foreign file in the way, a failed build)."""


@dataclass(frozen=True)
class CorpusEntry:
    """One named chain of the corpus: a spec to build, or a crafted recipe."""

    name: str
    spec: ChainSpec | None = None
    recipe: str | None = None

    @property
    def kind(self) -> str:
        return "chains" if self.spec is not None else "crafted"

    @property
    def directory(self) -> str:
        return f"{self.kind}/{self.name}"


def _chain(name: str, description: str, *layers: LayerSpec, **extra: Any) -> ChainSpec:
    return ChainSpec(name, tuple(layers), description=description, **extra)


def _specs() -> list[ChainSpec]:
    """The chains every profile's rules are exercised on (virstoragetest's shapes and more)."""
    relative_pair = _chain(
        "qcow2-raw-relative",
        "qcow2 naming a raw base relatively, format recorded",
        LayerSpec("top.qcow2", backing="base.raw", backing_format="raw"),
        LayerSpec("base.raw", "raw"),
    )
    return [
        _chain("raw", "a single raw image", LayerSpec("disk.raw", "raw")),
        relative_pair,
        _chain(
            "qcow2-raw-absolute",
            "qcow2 naming a raw base by absolute path",
            LayerSpec("top.qcow2", backing=f"{DIR_TOKEN}/base.raw", backing_format="raw"),
            LayerSpec("base.raw", "raw"),
        ),
        spec.linear("qcow2-qcow2-raw", ["qcow2", "qcow2", "raw"], description="three layers"),
        spec.linear("qcow2-v2-chain", ["qcow2-v2", "qcow2-v2", "raw"], description="compat 0.10"),
        spec.linear("qcow-raw", ["qcow", "raw"], description="qcow v1 records no format"),
        spec.linear("qed-raw", ["qed", "raw"], description="QED records raw by a flag"),
        spec.linear("qed-qcow2", ["qed", "qcow2"], description="QED cannot record qcow2"),
        spec.linear("vmdk-vmdk", ["vmdk", "vmdk"], description="vmdk parentFileNameHint"),
        spec.linear(
            "unrecorded-format-leaf",
            ["qcow2", "qcow2"],
            record_formats=False,
            description="backing format not recorded; the base has no backing",
        ),
        _chain(
            "unrecorded-format-over-backed",
            "backing format not recorded; the probed backing has its own backing",
            LayerSpec("top.qcow2", backing="mid.qcow2"),
            LayerSpec("mid.qcow2", backing="base.raw", backing_format="raw"),
            LayerSpec("base.raw", "raw"),
        ),
        _chain(
            "protocol-format-file",
            "the backing format field holds the protocol name 'file'",
            LayerSpec("top.qcow2", backing="base.raw", backing_format="file"),
            LayerSpec("base.raw", "raw"),
        ),
        _chain(
            "nbd-backing",
            "a backing on an NBD server",
            LayerSpec("top.qcow2", backing="nbd+tcp://example.org:6000/blah", backing_format="raw"),
        ),
        _chain(
            "missing-backing",
            "the backing file does not exist",
            LayerSpec("top.qcow2", backing="gone.qcow2", backing_format="qcow2"),
            LayerSpec("gone.qcow2", missing=True),
        ),
        _chain(
            "symlinks",
            "relative names through symlinks (virstoragetest qcow2-symlinks)",
            LayerSpec("sub/top.qcow2", backing="../sub/link1", backing_format="qcow2"),
            LayerSpec("sub/mid.qcow2", backing="../base.raw", backing_format="raw"),
            LayerSpec("base.raw", "raw"),
            symlinks=(SymlinkSpec("sub/link1", "mid.qcow2"), SymlinkSpec("sub/link2", "top.qcow2")),
            directories=("sub",),
            top="sub/link2",
        ),
        spec.loop("loop-self", 1),
        spec.loop("loop-mutual", 2),
        spec.loop("loop-three", 3),
        spec.loop("loop-alias", 1, alias=True),
        spec.deep("depth-200", 200),
        spec.deep("depth-201", 201),
        spec.deep("depth-1000", 1000),
    ]


def entries() -> tuple[CorpusEntry, ...]:
    """Every entry, chains first, each name unique within its kind."""
    chains = [CorpusEntry(chain.name, spec=chain) for chain in _specs()]
    crafted = [CorpusEntry(name, recipe=name) for name in sorted(craft.RECIPES)]
    return (*chains, *crafted)


Progress = Callable[[int, int, CorpusEntry, str], None]


def build_corpus(
    root: Path,
    *,
    method: BuildMethod = BuildMethod.AUTO,
    only: Callable[[CorpusEntry], bool] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Builds every (selected) entry under ``root`` and updates the manifest; returns it.

    Entries built before and not selected now stay in the manifest.
    """
    selected = [entry for entry in entries() if only is None or only(entry)]
    if not selected:
        raise CorpusError("no corpus entry is selected")
    root.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(root / MANIFEST)
    for position, entry in enumerate(selected, start=1):
        directory = root / entry.directory
        if entry.spec is not None:
            record, state = _build_chain(entry.spec, directory, method)
        else:
            assert entry.recipe is not None
            record, state = _build_crafted(entry.recipe, directory)
        record["directory"] = entry.directory
        manifest["entries"][f"{entry.kind}/{entry.name}"] = record
        if progress is not None:
            progress(position, len(selected), entry, state)
    _write_json(root / MANIFEST, manifest)
    return manifest


def _build_chain(
    chain: ChainSpec, directory: Path, method: BuildMethod
) -> tuple[dict[str, Any], str]:
    already = (directory / ".chainsuite-built").exists()
    try:
        built = build(chain, directory, method)
    except BuildError as error:
        raise CorpusError(f"chain {chain.name!r}: {error}") from None
    record = built.to_json()
    record["kind"] = "chain"
    record["images"] = [
        {
            "path": layer.name,
            "format": layer.format,
            "backing": layer.backing,
            "backing-format": layer.backing_format,
            "missing": layer.missing,
        }
        for layer in chain.layers
    ]
    return record, "kept" if already else "built"


def _build_crafted(name: str, directory: Path) -> tuple[dict[str, Any], str]:
    recipe = craft.RECIPES[name]
    marker = directory / CRAFTED_MARKER
    state = "kept"
    if not marker.exists():
        if directory.exists() and any(directory.iterdir()):
            raise CorpusError(
                f"{directory} holds files the corpus did not make; move them away or "
                "choose another directory"
            )
        staging = directory.with_name(f".staging-{directory.name}")
        shutil.rmtree(staging, ignore_errors=True)
        top = craft.craft(name, staging)
        _write_json(staging / CRAFTED_MARKER, {"recipe": name, "top": top.name})
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
        state = "built"
    top_name = json.loads(marker.read_text())["top"]
    files = sorted(
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.name != CRAFTED_MARKER and (path.is_file() or path.is_symlink())
    )
    record = {
        "kind": "crafted",
        "recipe": name,
        "summary": recipe.summary,
        "provenance": recipe.provenance,
        "top": top_name,
        "files": files,
    }
    return record, state


def _read_manifest(path: Path) -> dict[str, Any]:
    empty: dict[str, Any] = {"version": MANIFEST_VERSION, "entries": {}}
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as error:
        raise CorpusError(f"{path} is not a corpus manifest ({error}); move it away") from None
    if not isinstance(document, dict) or document.get("version") != MANIFEST_VERSION:
        raise CorpusError(f"{path} is not a version {MANIFEST_VERSION} corpus manifest")
    return document


def _write_json(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
