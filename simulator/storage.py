"""The prober's only window on a disk: look a path up, open it, read bytes at an offset.

``LocalStorage`` goes through the ``os`` module, so pyfakefs can stand in for
the disk in tests. Errors surface as ``OSError`` with an errno; the prober
turns them into chain errors.
"""

from __future__ import annotations

import os
import stat
from enum import StrEnum
from typing import Protocol


class FileKind(StrEnum):
    FILE = "file"
    DIR = "dir"
    BLOCK = "block"
    OTHER = "other"


def kind_of_mode(mode: int) -> FileKind:
    if stat.S_ISREG(mode):
        return FileKind.FILE
    if stat.S_ISDIR(mode):
        return FileKind.DIR
    if stat.S_ISBLK(mode):
        return FileKind.BLOCK
    return FileKind.OTHER


class ImageFile(Protocol):
    """An open image: what it is, how long it is, and its bytes."""

    @property
    def kind(self) -> FileKind: ...

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class Storage(Protocol):
    """What the prober needs of a disk."""

    def kind(self, path: str) -> FileKind | None:
        """The kind of what ``path`` names (following symlinks); None when nothing is there."""
        ...

    def open(self, path: str) -> ImageFile:
        """Open ``path`` for reading; raises OSError."""
        ...

    def canonical(self, path: str) -> str:
        """The path with symlinks and dots resolved; raises OSError when it does not exist."""
        ...


class _LocalImage:
    def __init__(self, path: str) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        try:
            info = os.fstat(self._file.fileno())
            self._kind = kind_of_mode(info.st_mode)
            self._size = info.st_size
            if self._kind is FileKind.BLOCK:
                self._size = self._file.seek(0, os.SEEK_END)
        except BaseException:
            self._file.close()
            raise

    @property
    def kind(self) -> FileKind:
        return self._kind

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        self._file.seek(offset)
        data = self._file.read(length)
        return data or b""

    def close(self) -> None:
        self._file.close()


class LocalStorage:
    """The host's file system through ``os``."""

    def kind(self, path: str) -> FileKind | None:
        try:
            return kind_of_mode(os.stat(path).st_mode)
        except OSError:
            return None

    def open(self, path: str) -> ImageFile:
        return _LocalImage(path)

    def canonical(self, path: str) -> str:
        return os.path.realpath(path, strict=True)
