"""The simulator's only window on a disk: look a path up, open and read it, write it.

``LocalStorage`` goes through the ``os`` module, so pyfakefs can stand in for
the disk in tests; ``MemoryStorage`` keeps files in a dictionary, for
simulations that need no real file. Errors surface as ``OSError`` with an
errno; the prober turns them into chain errors.
"""

from __future__ import annotations

import errno
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


Content = bytes | tuple[bytes | memoryview, ...]
"""A file's new content: bytes, or parts in order (an image's header, then a shared rest)."""


class ImageFile(Protocol):
    """An open image: what it is, how long it is, and its bytes."""

    @property
    def kind(self) -> FileKind: ...

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class Storage(Protocol):
    """What the prober and the simulated hypervisor need of a disk."""

    def kind(self, path: str) -> FileKind | None:
        """The kind of what ``path`` names (following symlinks); None when nothing is there."""
        ...

    def open(self, path: str) -> ImageFile:
        """Open ``path`` for reading; raises OSError."""
        ...

    def canonical(self, path: str) -> str:
        """The path with symlinks and dots resolved; raises OSError when it does not exist."""
        ...

    def write(self, path: str, data: Content, offset: int | None = None) -> None:
        """Writes ``data``: as the whole new content (``offset`` None) or over the bytes at
        ``offset`` of an existing file; raises OSError."""
        ...

    def remove(self, path: str) -> None:
        """Removes the file; raises OSError."""
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


def _joined(content: Content) -> bytes:
    return content if isinstance(content, bytes) else b"".join(content)


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

    def write(self, path: str, data: Content, offset: int | None = None) -> None:
        data = _joined(data)
        if offset is not None:
            with open(path, "r+b") as file:
                file.seek(offset)
                file.write(data)
            return
        # All-zero blocks are left as holes: the same bytes read back, with a fraction of
        # the writing (an encoded qcow2 image is mostly zeros).
        zero = bytes(SPARSE_BLOCK)
        with open(path, "wb") as file:
            for start in range(0, len(data), SPARSE_BLOCK):
                chunk = data[start : start + SPARSE_BLOCK]
                if chunk != zero[: len(chunk)]:
                    file.seek(start)
                    file.write(chunk)
            file.truncate(len(data))

    def remove(self, path: str) -> None:
        os.unlink(path)


SPARSE_BLOCK = 4096


class _MemoryFile:
    """A file's parts, kept as given: an image's shared rest is never copied."""

    def __init__(self, parts: tuple[bytes | memoryview, ...]) -> None:
        self.parts = parts
        self.size = sum(len(part) for part in parts)

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        first = self.parts[0] if self.parts else b""
        if end <= len(first):  # a header read, in an image's first part
            return bytes(first[offset:end])
        return b"".join(self._slices(offset, end))

    def written(self, offset: int, data: Content) -> _MemoryFile:
        """This file with ``data`` over the bytes at ``offset``; the untouched parts are views."""
        new = (data,) if isinstance(data, bytes) else data
        end = offset + sum(len(part) for part in new)
        padding = bytes(max(0, offset - self.size))
        parts: list[bytes | memoryview] = [*self._slices(0, offset), padding, *new]
        parts += self._slices(end, self.size)
        return _MemoryFile(tuple(part for part in parts if len(part)))

    def _slices(self, start: int, stop: int) -> list[memoryview]:
        found: list[memoryview] = []
        position = 0
        for part in self.parts:
            if position >= stop:
                break
            low, high = max(start - position, 0), min(stop - position, len(part))
            if low < high:
                found.append(memoryview(part)[low:high])
            position += len(part)
        return found


class _MemoryImage:
    def __init__(self, file: _MemoryFile) -> None:
        self._file = file

    @property
    def kind(self) -> FileKind:
        return FileKind.FILE

    @property
    def size(self) -> int:
        return self._file.size

    def read(self, offset: int, length: int) -> bytes:
        return self._file.read(offset, length)

    def close(self) -> None:
        pass


class MemoryStorage:
    """Regular files in a dictionary, by absolute normalised path: no symlinks, no
    permissions. Directories exist implicitly, as the parents of files."""

    def __init__(self) -> None:
        self.files: dict[str, _MemoryFile] = {}
        self._files_below: dict[str, int] = {}
        """How many files each directory holds, at any depth: a directory exists while
        it holds one."""

    def _key(self, path: str) -> str:
        if path.startswith("/") and "/." not in path and "//" not in path:
            return path.rstrip("/") or "/"  # already normal: the common case, kept cheap
        return os.path.normpath(os.path.join("/", path))

    def kind(self, path: str) -> FileKind | None:
        key = self._key(path)
        if key in self.files:
            return FileKind.FILE
        return FileKind.DIR if key in self._files_below else None

    def open(self, path: str) -> ImageFile:
        file = self.files.get(self._key(path))
        if file is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return _MemoryImage(file)

    def canonical(self, path: str) -> str:
        key = self._key(path)
        if self.kind(key) is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return key

    def read_bytes(self, path: str) -> bytes:
        """A file's whole content (for tests and tools)."""
        file = self.files.get(self._key(path))
        if file is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return _joined(file.parts)

    def write(self, path: str, data: Content, offset: int | None = None) -> None:
        key = self._key(path)
        if offset is None:
            if key not in self.files:
                self._count_below(key, 1)
            self.files[key] = _MemoryFile(data if isinstance(data, tuple) else (data,))
            return
        existing = self.files.get(key)
        if existing is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        self.files[key] = existing.written(offset, data)

    def remove(self, path: str) -> None:
        key = self._key(path)
        if self.files.pop(key, None) is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        self._count_below(key, -1)

    def _count_below(self, key: str, change: int) -> None:
        directory = key
        while directory != "/":
            directory = directory[: directory.rindex("/")] or "/"  # dirname of a normal path
            count = self._files_below.get(directory, 0) + change
            if count:
                self._files_below[directory] = count
            else:
                del self._files_below[directory]
