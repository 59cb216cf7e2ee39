"""Builders of real backing chains with qemu-img, for the tests (each test in its tmp_path).

Backing names are written verbatim (``create -u``, ``rebase -u``), so a test says exactly
what string a header records. The one thing qemu-img >= 6.1 refuses to make, an image
whose backing format is not recorded, is made with qemu-img and then re-encoded without
the format by the simulator's qcow2 encoder (see ``strip_backing_format``).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.formats.qcow2 import Qcow2Image, encode

StrPath = str | os.PathLike[str]

SHARED_INFO_KEYS = (
    "filename",
    "format",
    "virtual-size",
    "backing-filename",
    "full-backing-filename",
    "backing-filename-format",
)
"""Keys that mean the same in ``qemu-img info --output=json`` and in ``Chain.to_json()``."""


class QemuImgFailed(AssertionError):
    """qemu-img exited non-zero while a test was building its images."""


def qemu_img(*args: StrPath, cwd: StrPath | None = None) -> subprocess.CompletedProcess[str]:
    """Runs qemu-img; a failure fails the test with qemu-img's own message."""
    command = ["qemu-img", *(os.fspath(arg) for arg in args)]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise QemuImgFailed(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def create(
    path: StrPath,
    fmt: str = "qcow2",
    *,
    size: str = "1k",
    backing: str | None = None,
    backing_format: str | None = None,
    compat: str | None = None,
) -> Path:
    """``qemu-img create -u``: an empty image; ``backing`` is recorded exactly as given."""
    args: list[StrPath] = ["create", "-q", "-f", fmt]
    if backing is not None:
        args += ["-u", "-b", backing]
    if backing_format is not None:
        args += ["-F", backing_format]
    if compat is not None:
        args += ["-o", f"compat={compat}"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    qemu_img(*args, path, size)
    return Path(path)


def rebase_unsafe(path: StrPath, backing: str, backing_format: str, fmt: str = "qcow2") -> Path:
    """``qemu-img rebase -u``: rewrites only the recorded backing name and format."""
    qemu_img("rebase", "-u", "-f", fmt, "-b", backing, "-F", backing_format, path)
    return Path(path)


def info(path: StrPath) -> dict[str, Any]:
    """``qemu-img info --output=json`` of one image (its backing is not opened)."""
    document: dict[str, Any] = json.loads(qemu_img("info", "--output=json", path).stdout)
    return document


def strip_backing_format(path: StrPath) -> Path:
    """Rewrites a qcow2 image made by qemu-img so that it records no backing format.

    qemu-img >= 6.1 refuses to create or rebase to a backing without ``-F``, so this is
    the one step done by the simulator's encoder: the same virtual size, backing name and
    qcow2 version as qemu-img reported, an empty image, no backing-format extension.
    """
    made = info(path)
    assert made["format"] == "qcow2", made
    compat = made["format-specific"]["data"]["compat"]
    image = Qcow2Image(
        virtual_size=made["virtual-size"],
        backing_name=made["backing-filename"].encode(),
        backing_format=None,
        version=2 if compat == "0.10" else 3,
    )
    Path(path).write_bytes(encode(image))
    return Path(path)


def create_without_backing_format(
    path: StrPath, backing: str, *, size: str = "1k", compat: str | None = None
) -> Path:
    """A qcow2 image naming ``backing`` with no recorded backing format (see above)."""
    create(path, "qcow2", size=size, backing=backing, backing_format="raw", compat=compat)
    return strip_backing_format(path)


def symlink(link: StrPath, target: str) -> Path:
    """A symbolic link ``link`` whose content is ``target``, verbatim (may be relative)."""
    Path(link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return Path(link)


def linear_chain(directory: Path, depth: int, fmt: str = "qcow2") -> Path:
    """``depth`` images, ``layer0.raw`` at the bottom, each above naming the one below
    relatively with its format recorded; returns the top."""
    below = create(directory / "layer0.raw", "raw", size="1M")
    below_format = "raw"
    for number in range(1, depth):
        image = directory / f"layer{number}.{fmt}"
        create(image, fmt, size="1M", backing=below.name, backing_format=below_format)
        below, below_format = image, fmt
    return below


@dataclass(frozen=True)
class ChainInfo:
    """What ``qemu-img info --backing-chain --output=json`` answered."""

    returncode: int
    layers: list[dict[str, Any]] | None
    stderr: str


def info_chain(top: StrPath, cwd: StrPath, fmt: str | None = None) -> ChainInfo:
    """``qemu-img info --backing-chain --output=json`` as a user in ``cwd`` runs it."""
    command = ["qemu-img", "info", "--backing-chain", "--output=json"]
    if fmt is not None:
        command += ["-f", fmt]
    command.append(os.fspath(top))
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    layers = json.loads(done.stdout) if done.returncode == 0 else None
    return ChainInfo(done.returncode, layers, done.stderr)


def shared_keys(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each layer restricted to the keys qemu-img and ``Chain.to_json()`` share."""
    return [{key: layer[key] for key in SHARED_INFO_KEYS if key in layer} for layer in layers]
