"""Memory storage behaves as the disk does for everything the simulator asks of it.

The benchmark's in-memory figure and any simulation without files rest on it, so each
test runs one sequence of calls on both storages and compares every answer.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from simulator.profiles import get_profile
from simulator.storage import LocalStorage, MemoryStorage, Storage
from simulator.workloads import STANDARD, Workload, run


def outcome(action: Callable[[], object]) -> object:
    """What a call returned, or the errno it raised."""
    try:
        return action()
    except OSError as error:
        return ("error", error.errno)


def read_all(storage: Storage, path: str, offset: int, length: int) -> object:
    def read() -> bytes:
        image = storage.open(path)
        try:
            return image.read(offset, length)
        finally:
            image.close()

    return outcome(read)


def same_on_both(tmp_path: Path, calls: Callable[[Storage, str], list[object]]) -> list[object]:
    """The answers of ``calls`` on the disk (under tmp_path) and in memory (under the
    same path, which memory storage takes as it is); asserts they agree."""
    root = str(tmp_path.resolve())
    on_disk = calls(LocalStorage(), root)
    in_memory = calls(MemoryStorage(), root)
    assert in_memory == on_disk
    return on_disk


def test_reads_across_parts_and_past_the_end(tmp_path: Path) -> None:
    header, rest = b"H" * 100, memoryview(bytes(range(256)) * 40)

    def calls(storage: Storage, root: str) -> list[object]:
        path = f"{root}/image"
        storage.write(path, (header, rest))
        return [
            read_all(storage, path, 0, 50),
            read_all(storage, path, 90, 20),  # across the parts
            read_all(storage, path, 4086, 30),  # within the rest
            read_all(storage, path, 9000, 2000),  # past the end: what is there
            read_all(storage, path, 20000, 10),
            outcome(lambda: storage.open(path).size),
        ]

    assert same_on_both(tmp_path, calls)[0] == b"H" * 50


def test_writes_at_an_offset_keep_the_rest_and_pad_with_zeros(tmp_path: Path) -> None:
    def calls(storage: Storage, root: str) -> list[object]:
        path = f"{root}/image"
        storage.write(path, bytes(range(200)) * 30)
        storage.write(path, (b"new", memoryview(bytes(5000))), 10)  # parts, past the head
        storage.write(path, b"tail", 7000)  # beyond the end: zeros between
        storage.write(path, b"x", 0)
        return [read_all(storage, path, 0, 8000), outcome(lambda: storage.open(path).size)]

    assert same_on_both(tmp_path, calls)[1] == 7004


def test_directories_exist_while_they_hold_files(tmp_path: Path) -> None:
    def calls(storage: Storage, root: str) -> list[object]:
        result: list[object] = []
        if isinstance(storage, LocalStorage):
            Path(root, "a", "b").mkdir(parents=True)  # the disk needs them made
        storage.write(f"{root}/a/b/one", b"1")
        storage.write(f"{root}/a/two", b"2")
        result += [storage.kind(f"{root}/a"), storage.kind(f"{root}/a/b"), storage.kind(root)]
        result += [storage.kind(f"{root}/a/b/one"), storage.kind(f"{root}/a/none")]
        result += [outcome(lambda: storage.canonical(f"{root}//a/./b/../two"))]
        storage.remove(f"{root}/a/b/one")
        result += [outcome(lambda: storage.remove(f"{root}/a/b/one"))]
        result += [outcome(lambda: storage.open(f"{root}/a/b/one"))]
        result += [outcome(lambda: storage.canonical(f"{root}/a/none"))]
        result += [storage.kind(f"{root}/a/two")]
        return result

    answers = same_on_both(tmp_path, calls)
    assert answers[-4:-1] == [("error", errno.ENOENT)] * 3


def test_a_directory_goes_when_its_last_file_goes() -> None:
    """Memory storage has no empty directories (the disk keeps them; nothing asks)."""
    storage = MemoryStorage()
    storage.write("/d/e/file", b"")
    storage.write("/d/other", b"")
    storage.remove("/d/e/file")
    assert (storage.kind("/d/e"), storage.kind("/d")) == (None, "dir")
    storage.remove("/d/other")
    assert (storage.kind("/d"), storage.kind("/")) == (None, None)


@pytest.mark.parametrize("workload", STANDARD, ids=lambda workload: workload.name)
def test_workloads_cost_the_same_in_memory_and_on_disk(workload: Workload, tmp_path: Path) -> None:
    profile = get_profile("libvirt-modern")
    on_disk = run(workload, profile, str(tmp_path))
    in_memory = run(workload, profile, str(tmp_path), storage=MemoryStorage())
    assert in_memory.counters.probes > 0
    assert (in_memory.counters, in_memory.failed_operations) == (
        on_disk.counters,
        on_disk.failed_operations,
    )
