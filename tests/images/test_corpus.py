"""The corpus: every entry built with a manifest, resumable, never touching foreign files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.cli import main
from images import corpus, craft
from images.corpus import CorpusError, build_corpus, entries
from images.qemu_img import info

pytestmark = pytest.mark.qemu_img

SMALL = {"chains/qcow2-raw-relative", "chains/loop-self", "crafted/qcow2-backing-name-1024"}


def small(entry: corpus.CorpusEntry) -> bool:
    return f"{entry.kind}/{entry.name}" in SMALL


def test_entry_names_are_unique_and_cover_every_recipe() -> None:
    names = [f"{entry.kind}/{entry.name}" for entry in entries()]
    assert len(names) == len(set(names))
    assert {f"crafted/{name}" for name in craft.RECIPES} <= set(names)


def test_manifest_records_how_each_image_was_made(tmp_path: Path) -> None:
    manifest = build_corpus(tmp_path, only=small)
    on_disk = json.loads((tmp_path / corpus.MANIFEST).read_text())
    assert on_disk == manifest
    pair = manifest["entries"]["chains/qcow2-raw-relative"]
    commands = [command for layer in pair["layers"] for command in layer["commands"]]
    assert ["qemu-img", "create", "-q", "-f", "raw", "base.raw", "1048576"] in commands
    assert {"path": "top.qcow2", "format": "qcow2", "backing": "base.raw"}.items() <= (
        pair["images"][0].items()
    )
    crafted = manifest["entries"]["crafted/qcow2-backing-name-1024"]
    assert crafted["recipe"] == "qcow2-backing-name-1024"
    assert crafted["provenance"]
    top = tmp_path / crafted["directory"] / crafted["top"]
    assert top.is_file()


def test_built_chains_read_back_through_qemu_img(tmp_path: Path) -> None:
    build_corpus(tmp_path, only=small)
    top = tmp_path / "chains/qcow2-raw-relative/top.qcow2"
    assert info(top)["backing-filename"] == "base.raw"
    assert info(tmp_path / "chains/loop-self/loop-0.qcow2")["backing-filename"] == "loop-0.qcow2"


def test_second_build_keeps_what_is_there(tmp_path: Path) -> None:
    states: list[str] = []
    build_corpus(tmp_path, only=small)
    top = tmp_path / "chains/qcow2-raw-relative/top.qcow2"
    before = top.stat().st_mtime_ns
    build_corpus(tmp_path, only=small, progress=lambda _i, _n, _e, state: states.append(state))
    assert states == ["kept"] * len(SMALL)
    assert top.stat().st_mtime_ns == before


def test_interrupted_crafted_build_resumes(tmp_path: Path) -> None:
    staging = tmp_path / "crafted/.staging-qcow2-backing-name-1024"
    staging.mkdir(parents=True)
    (staging / "half-written.qcow2").write_bytes(b"QFI")
    build_corpus(tmp_path, only=small)
    assert not staging.exists()
    assert (tmp_path / "crafted/qcow2-backing-name-1024" / corpus.CRAFTED_MARKER).exists()


def test_foreign_files_are_never_overwritten(tmp_path: Path) -> None:
    mine = tmp_path / "crafted/qcow2-backing-name-1024/notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with pytest.raises(CorpusError, match="did not make"):
        build_corpus(tmp_path, only=small)
    assert mine.read_text() == "mine"


def test_a_partial_build_keeps_earlier_entries_in_the_manifest(tmp_path: Path) -> None:
    build_corpus(tmp_path, only=small)
    build_corpus(tmp_path, only=lambda entry: entry.name == "raw")
    recorded = json.loads((tmp_path / corpus.MANIFEST).read_text())["entries"]
    assert set(recorded) == SMALL | {"chains/raw"}


def test_cli_shows_progress_and_refuses_an_unknown_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["corpus", "build", str(tmp_path), "--only", "chains/qcow2-raw-*"]) == 0
    captured = capsys.readouterr()
    assert "[1/2] chains/qcow2-raw-relative built" in captured.err
    assert main(["corpus", "build", str(tmp_path), "--only", "nothing*"]) == 1
    assert "no entry matches" in capsys.readouterr().err
