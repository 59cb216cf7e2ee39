"""Builds a ``ChainSpec`` on disk: with qemu-img, with the native writer, or each where it fits.

``qemu-img`` is the authentic path. Layers are made base first, so ``create``
opens each backing as qemu-img would and needs ``-u`` only where the backing
cannot be opened yet (missing, part of a loop, a ``json:`` or network name, a
protocol recorded as its format); a backing name equal to the image's own name
is set with ``rebase -u``. The native writer (``images.native``) makes what
qemu-img refuses (a backing without a recorded format) and deep chains fast;
VMDK always goes through qemu-img.

A directory holds at most one build. Its marker file records the spec's digest
and, once complete, the build itself, so building the same spec again costs
nothing, and files the marker does not vouch for are never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from images import native, qemu_img
from images.spec import DIR_TOKEN, ChainSpec, LayerSpec

MARKER = ".chainsuite-built"
AUTO_NATIVE_ABOVE_LAYERS = 50
"""AUTO writes natively every layer qemu-img need not make in chains with more layers."""
IMAGE_FORMATS = frozenset({"qcow2", "qcow", "qed", "vmdk", "raw"})
REBASABLE_FORMATS = frozenset({"qcow2", "qed"})
"""Formats whose backing ``qemu-img rebase -u`` can change."""


class BuildMethod(StrEnum):
    """How a chain, or one layer of it, is made."""

    QEMU_IMG = "qemu-img"
    NATIVE = "native"
    AUTO = "auto"
    """qemu-img where it can make the layer, the native writer where it refuses or is too slow."""


class BuildError(Exception):
    """The chain cannot be built: files in the way, or a layer no method can make."""


@dataclass(frozen=True)
class LayerBuild:
    """How one layer was made: its method, the commands run, and why qemu-img was not used."""

    name: str
    method: BuildMethod
    commands: tuple[tuple[str, ...], ...]
    """qemu-img command lines as run in the chain directory, or ``("native:<format>", name)``."""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": str(self.method),
            "commands": [list(command) for command in self.commands],
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LayerBuild:
        return cls(
            name=document["name"],
            method=BuildMethod(document["method"]),
            commands=tuple(tuple(command) for command in document["commands"]),
            reason=document.get("reason", ""),
        )


@dataclass(frozen=True)
class BuiltChain:
    """A chain on disk: where it is, its spec, and how each layer was made (in build order)."""

    directory: Path
    top: Path
    spec: ChainSpec
    layers: tuple[LayerBuild, ...]
    method: BuildMethod
    """The method the build was asked for."""

    @property
    def commands(self) -> list[list[str]]:
        """Every qemu-img command line run and native note, in order; what a manifest records."""
        return [list(command) for layer in self.layers for command in layer.commands]

    @property
    def methods(self) -> dict[str, BuildMethod]:
        """The method each built layer was made with (missing layers are absent)."""
        return {layer.name: layer.method for layer in self.layers}

    def path(self, name: str) -> Path:
        """The path of a layer, symlink or directory named in the spec."""
        return self.directory / name

    def layers_json(self) -> dict[str, Any]:
        """How the build was asked for and how each layer was made."""
        return {
            "method": str(self.method),
            "layers": [layer.to_json() for layer in self.layers],
        }

    def to_json(self) -> dict[str, Any]:
        """A manifest entry: the spec, its digest, the top and how each layer was made.

        Paths are relative to the chain directory, which a cached build renames.
        """
        return {
            "digest": self.spec.digest(),
            "spec": self.spec.to_json(),
            "top": self.spec.top,
            **self.layers_json(),
        }


def build(spec: ChainSpec, directory: Path, method: BuildMethod = BuildMethod.AUTO) -> BuiltChain:
    """Builds ``spec`` into ``directory`` (created if needed); a completed build is reused.

    ``$DIR`` in backing names and symlink texts becomes the resolved directory.
    Raises BuildError, and leaves the directory as it was, when a file the spec
    names already exists and no earlier build of the same spec made it, or
    when a layer cannot be made with the method asked for.
    """
    directory = directory.resolve()
    return _build(spec, spec.digest(), directory, directory, BuildMethod(method))


def build_cached(
    spec: ChainSpec, cache_root: Path, method: BuildMethod = BuildMethod.AUTO
) -> BuiltChain:
    """``build`` into ``cache_root / spec.digest()``, made in a sibling directory then renamed.

    A completed build there with the same method is returned at once. While
    the build runs, absolute names point at the final directory, which does
    not exist yet, so qemu-img creates those layers with ``-u``.
    """
    method = BuildMethod(method)
    digest = spec.digest()
    cache_root.mkdir(parents=True, exist_ok=True)
    final = cache_root.resolve() / digest
    reused = _completed_build(spec, digest, final, method)
    if reused is not None:
        return reused
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=final.parent))
    try:
        built = _build(spec, digest, staging, final, method)
        return _move_into_place(staging, built, digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, built: BuiltChain, digest: str) -> BuiltChain:
    """Renames ``staging`` to the built chain's directory, replacing an older build there."""
    final = built.directory
    if os.path.lexists(final):
        if _read_marker(final).get("digest") != digest:
            raise BuildError(f"{final} exists and holds no build of this spec")
        retired = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
        try:
            os.rename(final, retired / "chain")
            os.rename(staging, final)
        finally:
            shutil.rmtree(retired, ignore_errors=True)
        return built
    try:
        os.rename(staging, final)
    except OSError:
        winner = _completed_build(built.spec, digest, final, built.method)
        if winner is None:
            raise
        return winner
    return built


def _completed_build(
    spec: ChainSpec, digest: str, directory: Path, method: BuildMethod
) -> BuiltChain | None:
    marker = _read_marker(directory)
    if marker.get("digest") != digest or marker.get("complete") is not True:
        return None
    if marker.get("method") != str(method):
        return None
    return BuiltChain(
        directory=directory,
        top=directory / spec.top,
        spec=spec,
        layers=tuple(LayerBuild.from_json(layer) for layer in marker.get("layers", ())),
        method=method,
    )


def _read_marker(directory: Path) -> dict[str, Any]:
    """The marker's content; empty when there is none, raises BuildError when it is not ours."""
    path = directory / MARKER
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise BuildError(f"{path} is not a chainsuite build marker: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("digest"), str):
        raise BuildError(f"{path} is not a chainsuite build marker")
    return document


def _write_marker(directory: Path, document: dict[str, Any]) -> None:
    staging = directory / f"{MARKER}.tmp"
    staging.write_text(json.dumps(document, sort_keys=True) + "\n")
    os.replace(staging, directory / MARKER)


def _build(
    spec: ChainSpec, digest: str, directory: Path, chain_directory: Path, method: BuildMethod
) -> BuiltChain:
    """Builds into ``directory``; ``$DIR`` and the returned paths name ``chain_directory``."""
    reused = _completed_build(spec, digest, directory, method)
    if reused is not None:
        return BuiltChain(chain_directory, chain_directory / spec.top, spec, reused.layers, method)
    if os.path.lexists(directory) and not directory.is_dir():
        raise BuildError(f"{directory} exists and is not a directory")
    created = _Created()
    directory_existed = directory.is_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        ours = _claim(spec, digest, directory)
        created.paths.append(directory / MARKER)
        _write_marker(directory, {"digest": digest, "complete": False})
        _remove_previous(ours)
        builder = _Builder(spec, directory, str(chain_directory), method, created)
        layers = builder.run()
        built = BuiltChain(chain_directory, chain_directory / spec.top, spec, layers, method)
        _write_marker(directory, {"digest": digest, "complete": True, **built.layers_json()})
    except BaseException:
        created.remove()
        if not directory_existed:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return built


def _claim(spec: ChainSpec, digest: str, directory: Path) -> list[Path]:
    """The existing paths this build will replace; BuildError if any is not ours to replace."""
    marker = _read_marker(directory)
    if marker and marker["digest"] != digest:
        raise BuildError(
            f"{directory} holds a build of another spec (digest {marker['digest']}); "
            f"build into another directory"
        )
    outside = [name for name in _made_files(spec) + list(spec.directories) if _escapes(name)]
    if outside:
        raise BuildError(f"spec {spec.name!r} names paths outside its directory: {outside}")
    ours = bool(marker)
    replaced: list[Path] = []
    foreign: list[str] = []
    for name in _made_files(spec):
        path = directory / name
        if os.path.lexists(path):
            if ours:
                replaced.append(path)
            else:
                foreign.append(name)
    for layer in spec.layers:
        if layer.missing and os.path.lexists(directory / layer.name):
            foreign.append(f"{layer.name} (the spec says it is missing)")
    for name in _made_directories(spec):
        path = directory / name
        if os.path.lexists(path) and not path.is_dir():
            foreign.append(f"{name} (the spec needs a directory there)")
    if foreign:
        raise BuildError(
            f"{directory} already holds files that no build of spec {spec.name!r} made: "
            + ", ".join(sorted(foreign))
        )
    return replaced


def _remove_previous(paths: list[Path]) -> None:
    for path in paths:
        path.unlink()


def _escapes(name: str) -> bool:
    return not name or os.path.isabs(name) or ".." in Path(name).parts


def _made_files(spec: ChainSpec) -> list[str]:
    names = [link.link for link in spec.symlinks]
    names += [layer.name for layer in spec.layers if not layer.missing]
    return names


def _made_directories(spec: ChainSpec) -> list[str]:
    """Spec directories and every parent of a file the build makes, parents first.

    A spec symlink stands for a directory that exists once the symlinks are made.
    """
    links = {os.path.normpath(link.link) for link in spec.symlinks}
    wanted: set[str] = set()
    starts = [os.path.normpath(name) for name in spec.directories]
    starts += [os.path.dirname(os.path.normpath(name)) for name in _made_files(spec)]
    for directory in starts:
        while directory not in ("", ".", "/", *links) and directory not in wanted:
            wanted.add(directory)
            directory = os.path.dirname(directory)
    return sorted(wanted, key=lambda name: (name.count("/"), name))


@dataclass
class _Created:
    """Paths this build created, removed again when it fails."""

    paths: list[Path] = field(default_factory=list)

    def remove(self) -> None:
        for path in reversed(self.paths):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
            except OSError:
                pass


class _QemuImgRefuses(Exception):
    """qemu-img cannot make this layer; the message says why."""


class _Builder:
    """One build: directories, symlinks, then layers base first."""

    def __init__(
        self,
        spec: ChainSpec,
        directory: Path,
        chain_directory: str,
        method: BuildMethod,
        created: _Created,
    ) -> None:
        self.spec = spec
        self.directory = directory
        self.chain_directory = chain_directory
        self.method = method
        self.created = created
        self.deep = len(spec.layers) > AUTO_NATIVE_ABOVE_LAYERS
        self.layer_named = {layer.name: layer for layer in spec.layers}
        self.opens: dict[str, bool] = {}

    def run(self) -> tuple[LayerBuild, ...]:
        for name in _made_directories(self.spec):
            path = self.directory / name
            if not path.is_dir():
                path.mkdir()
                self.created.paths.append(path)
        for link in self.spec.symlinks:
            path = self.directory / link.link
            os.symlink(self.substituted(link.target), path)
            self.created.paths.append(path)
        targets = self.backing_targets()
        built = []
        for layer in _base_first(self.spec, targets):
            self.opens[layer.name] = self.backing_opens(layer, targets.get(layer.name))
            if layer.missing:
                continue
            self.created.paths.append(self.directory / layer.name)
            built.append(self.make(layer, targets.get(layer.name)))
        return tuple(built)

    def substituted(self, text: str) -> str:
        return text.replace(DIR_TOKEN, self.chain_directory)

    def backing_targets(self) -> dict[str, str]:
        """Layer name -> the layer its backing name leads to, as the file system resolves it.

        Without symlinks in the spec, names resolve lexically (the same answer, faster).
        """
        resolve = os.path.realpath if self.spec.symlinks else os.path.normpath
        root = str(self.directory)
        layer_at = {
            resolve(os.path.join(root, layer.name)): layer.name for layer in self.spec.layers
        }
        targets = {}
        for layer in self.spec.layers:
            if layer.backing is None:
                continue
            backing = self.substituted(layer.backing)
            if not backing or _has_protocol(backing):
                continue
            relative_to = os.path.join(root, os.path.dirname(layer.name))
            found = layer_at.get(resolve(os.path.join(relative_to, backing)))
            if found is not None:
                targets[layer.name] = found
        return targets

    def backing_opens(self, layer: LayerSpec, target: str | None) -> bool:
        """Whether opening ``layer``'s backing chain would succeed once ``layer`` is made.

        Called base first, so a target in a loop has no answer yet and counts as not opening.
        """
        if layer.missing:
            return False
        recorded = native.recorded_backing_format(layer.format, layer.backing, layer.backing_format)
        if native.recorded_backing_name(layer.format, layer.backing) is None:
            return True
        if target is None or not self.opens.get(target, False):
            return False
        return _format_opens(recorded, self.layer_named[target].format)

    def make(self, layer: LayerSpec, target: str | None) -> LayerBuild:
        if layer.format == "vmdk" or self.method is BuildMethod.QEMU_IMG:
            try:
                return self.with_qemu_img(layer, target)
            except _QemuImgRefuses as refusal:
                raise BuildError(f"{layer.name}: {refusal}") from None
            except qemu_img.QemuImgError as error:
                raise BuildError(f"{layer.name}: {error}") from None
        if self.method is BuildMethod.NATIVE:
            return self.natively(layer)
        if self.deep:
            return self.natively(layer, f"more than {AUTO_NATIVE_ABOVE_LAYERS} layers")
        try:
            return self.with_qemu_img(layer, target)
        except _QemuImgRefuses as refusal:
            return self.natively(layer, str(refusal))
        except qemu_img.QemuImgError as error:
            return self.natively(layer, f"qemu-img failed: {error.stderr.strip()}")

    def natively(self, layer: LayerSpec, reason: str = "") -> LayerBuild:
        backing = self.substituted(layer.backing) if layer.backing is not None else None
        try:
            made = native.image(
                layer.format, layer.size, backing, layer.backing_format, layer.compat
            )
        except native.NativeWriteError as error:
            raise BuildError(f"{layer.name}: {error}") from None
        native.write_image(self.directory / layer.name, made)
        note = (f"native:{layer.format}", layer.name)
        return LayerBuild(layer.name, BuildMethod.NATIVE, (note,), reason)

    def with_qemu_img(self, layer: LayerSpec, target: str | None) -> LayerBuild:
        commands = list(self.qemu_img_commands(layer, target))
        for command in commands:
            qemu_img.run(command[1:], cwd=self.directory)
        return LayerBuild(layer.name, BuildMethod.QEMU_IMG, tuple(commands))

    def qemu_img_commands(self, layer: LayerSpec, target: str | None) -> Iterator[tuple[str, ...]]:
        """The command lines that make ``layer``; _QemuImgRefuses when there are none."""
        path = _command_line_path(layer.name)
        create = ["qemu-img", "create", "-q", "-f", layer.format]
        if layer.compat is not None:
            create += ["-o", f"compat={layer.compat}"]
        size = str(layer.size)
        backing = self.substituted(layer.backing) if layer.backing is not None else None
        if backing is None:
            yield (*create, path, size)
            return
        backing_format = layer.backing_format
        if layer.format == "vmdk":
            backing_format = backing_format or "vmdk"
        if backing == "":
            raise _QemuImgRefuses("qemu-img refuses an empty backing name")
        if backing_format is None:
            raise _QemuImgRefuses("qemu-img >= 6.1 refuses a backing without a backing format")
        if backing == path:
            if layer.format not in REBASABLE_FORMATS:
                raise _QemuImgRefuses(
                    f"qemu-img refuses a backing named as the image itself "
                    f"and cannot rebase a {layer.format} image"
                )
            yield (*create, path, size)
            rebase = ["qemu-img", "rebase", "-q", "-u", "-f", layer.format]
            yield (*rebase, "-b", backing, "-F", backing_format, path)
            return
        create += ["-b", backing, "-F", backing_format]
        if not self.creates_safely(target, backing, backing_format):
            create.append("-u")
        yield (*create, path, size)

    def creates_safely(self, target: str | None, backing: str, backing_format: str) -> bool:
        """Whether ``create`` without ``-u`` can open the backing chain as qemu-img would."""
        if _has_protocol(backing) or backing_format not in IMAGE_FORMATS or target is None:
            return False
        if not self.opens.get(target, False):
            return False
        return _format_opens(backing_format, self.layer_named[target].format)


def _base_first(spec: ChainSpec, targets: dict[str, str]) -> list[LayerSpec]:
    """Layers with each one after the layer its backing leads to (loops broken anywhere)."""
    layer_named = {layer.name: layer for layer in spec.layers}
    order: list[LayerSpec] = []
    placed: set[str] = set()
    for start in reversed(spec.layers):
        path: dict[str, None] = {}
        name: str | None = start.name
        while name is not None and name not in placed and name not in path:
            path[name] = None
            name = targets.get(name)
        for name in reversed(path):
            placed.add(name)
            order.append(layer_named[name])
    return order


def _format_opens(recorded: str | None, actual: str) -> bool:
    """Whether a backing of format ``actual`` opens under the recorded format (None: probed)."""
    return recorded in (None, "raw", "file", actual)


def _has_protocol(name: str) -> bool:
    """qemu's path_has_protocol: a ``:`` before any ``/`` (``json:``, ``nbd:``, ``file:``)."""
    colon = name.find(":")
    slash = name.find("/")
    return colon >= 0 and (slash < 0 or colon < slash)


def _command_line_path(name: str) -> str:
    """The name qemu-img is given: ``./`` keeps it from reading as an option or a protocol."""
    if name.startswith("-") or _has_protocol(name):
        return f"./{name}"
    return name
