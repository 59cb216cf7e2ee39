"""A thin wrapper around the real qemu-img: every call has a timeout, every failure keeps
qemu-img's exit status and message.

Only what the suite needs: create, rebase, commit, info, check and version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 60.0
INSTALL_HINT = "install it as root with: apt-get install --no-install-recommends qemu-utils"

PathLike = str | Path


class QemuImgError(Exception):
    """qemu-img failed: its exit status and its stderr, verbatim."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr
        message = stderr.strip() or f"exit status {returncode}"
        super().__init__(f"qemu-img {command[1] if len(command) > 1 else ''}: {message}")


class QemuImgMissing(QemuImgError):
    """qemu-img is not installed."""

    def __init__(self) -> None:
        super().__init__(["qemu-img"], 127, f"qemu-img is not on PATH; {INSTALL_HINT}")


class QemuImgTimeout(QemuImgError):
    """qemu-img did not finish in time (it was killed)."""

    def __init__(self, command: Sequence[str], timeout: float) -> None:
        super().__init__(command, -9, f"no answer within {timeout:g} s; killed")


@dataclass(frozen=True)
class CheckResult:
    """``qemu-img check --output=json``: whether the image is clean, and the full report."""

    clean: bool
    report: dict[str, Any]


def executable() -> str:
    """The qemu-img program; QemuImgMissing when there is none."""
    found = shutil.which("qemu-img")
    if found is None:
        raise QemuImgMissing
    return found


def run(
    args: Sequence[str],
    *,
    cwd: PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    accept: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[str]:
    """Runs ``qemu-img ARGS``; raises QemuImgError unless the exit status is in ``accept``."""
    command = [executable(), *args]
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise QemuImgTimeout(command, timeout) from None
    if done.returncode not in accept:
        raise QemuImgError(command, done.returncode, done.stderr)
    return done


def version(*, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The version number, e.g. ``7.2.22``."""
    first = run(["--version"], timeout=timeout).stdout.splitlines()[0]
    return first.split()[2] if first.startswith("qemu-img version") else first


def create(
    path: PathLike,
    fmt: str,
    size: int | str | None = None,
    *,
    backing: str | None = None,
    backing_format: str | None = None,
    unsafe: bool = False,
    options: dict[str, str] | None = None,
    cwd: PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """``qemu-img create -f FMT [-b BACKING] [-F BFMT] [-u] [-o k=v,...] PATH [SIZE]``."""
    args = ["create", "-q", "-f", fmt]
    if backing is not None:
        args += ["-b", backing]
    if backing_format is not None:
        args += ["-F", backing_format]
    if unsafe:
        args.append("-u")
    if options:
        args += ["-o", ",".join(f"{key}={value}" for key, value in options.items())]
    args.append(str(path))
    if size is not None:
        args.append(str(size))
    run(args, cwd=cwd, timeout=timeout)


def rebase(
    path: PathLike,
    backing: str,
    *,
    backing_format: str | None = None,
    unsafe: bool = False,
    fmt: str | None = None,
    cwd: PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """``qemu-img rebase [-u] [-f FMT] -b BACKING [-F BFMT] PATH``; ``-b ''`` flattens."""
    args = ["rebase", "-q"]
    if unsafe:
        args.append("-u")
    if fmt is not None:
        args += ["-f", fmt]
    args += ["-b", backing]
    if backing_format is not None:
        args += ["-F", backing_format]
    args.append(str(path))
    run(args, cwd=cwd, timeout=timeout)


def commit(
    path: PathLike,
    *,
    base: str | None = None,
    keep_top: bool = False,
    fmt: str | None = None,
    cwd: PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """``qemu-img commit [-d] [-b BASE] PATH``: the top's data into its backing (or BASE)."""
    args = ["commit", "-q"]
    if fmt is not None:
        args += ["-f", fmt]
    if keep_top:
        args.append("-d")
    if base is not None:
        args += ["-b", base]
    args.append(str(path))
    run(args, cwd=cwd, timeout=timeout)


def info(
    path: PathLike,
    *,
    backing_chain: bool = False,
    force_share: bool = False,
    fmt: str | None = None,
    cwd: PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """``qemu-img info --output=json``: a dict, or with ``backing_chain`` a list of dicts."""
    args = ["info", "--output=json"]
    if backing_chain:
        args.append("--backing-chain")
    if force_share:
        args.append("-U")
    if fmt is not None:
        args += ["-f", fmt]
    args.append(str(path))
    return json.loads(run(args, cwd=cwd, timeout=timeout).stdout)


def check(
    path: PathLike,
    *,
    fmt: str | None = None,
    cwd: PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> CheckResult:
    """``qemu-img check --output=json``; exit status 2 or 3 (corruption, leaks) is a result."""
    args = ["check", "--output=json"]
    if fmt is not None:
        args += ["-f", fmt]
    args.append(str(path))
    done = run(args, cwd=cwd, timeout=timeout, accept=(0, 2, 3))
    report: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    return CheckResult(done.returncode == 0, report)
