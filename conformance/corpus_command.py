"""``chainsuite corpus``: build the corpus with progress, or list its entries."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from images.build import BuildMethod
from images.corpus import CorpusEntry, CorpusError, build_corpus, entries
from images.qemu_img import QemuImgError


def run_corpus(args: argparse.Namespace) -> int:
    if args.corpus_command == "list":
        for entry in entries():
            about = entry.spec.description if entry.spec else _recipe_summary(entry)
            print(f"{entry.kind}/{entry.name:<44} {about}")
        return 0
    pattern = args.only

    def selected(entry: CorpusEntry) -> bool:
        return pattern is None or fnmatch.fnmatch(f"{entry.kind}/{entry.name}", pattern)

    def progress(position: int, total: int, entry: CorpusEntry, state: str) -> None:
        width = len(str(total))
        print(f"[{position:>{width}}/{total}] {entry.directory} {state}", file=sys.stderr)

    if not any(selected(entry) for entry in entries()):
        print(
            f"corpus: no entry matches {pattern!r} (see: chainsuite corpus list)", file=sys.stderr
        )
        return 1
    root = Path(args.directory)
    try:
        manifest = build_corpus(
            root, method=BuildMethod(args.method), only=selected, progress=progress
        )
    except (CorpusError, QemuImgError, OSError) as error:
        print(f"corpus: {error}", file=sys.stderr)
        return 1
    count = len(manifest["entries"])
    print(f"{count} entries in {root}; manifest: {root / 'manifest.json'}")
    return 0


def _recipe_summary(entry: CorpusEntry) -> str:
    from images.craft import RECIPES

    return RECIPES[entry.recipe or ""].summary
