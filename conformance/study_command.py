"""``chainsuite study``: runs the cache-policy study and writes its three files.

The output directory gets study.md, study.json and study.png. Results already
there are never overwritten unless ``--force`` is given: the command refuses
before running anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance import study

OUTPUTS = ("study.md", "study.json", "study.png")
PNG_HINT = (
    "study: study.png skipped: matplotlib is not installed "
    "(pip install 'chainsuite[study]' to get it)"
)


def run_study_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.vms < 1:
        print(f"study: --vms {args.vms}: need at least 1 VM", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"study: {out} exists and is not a directory", file=sys.stderr)
        return 2
    earlier = [name for name in OUTPUTS if (out / name).exists()]
    if earlier and not args.force:
        print(
            f"study: {out} already holds {', '.join(earlier)}; "
            "pass --force to overwrite, or choose another --out",
            file=sys.stderr,
        )
        return 1

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"study: {message}", file=sys.stderr, flush=True)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"study: cannot create {out}: {error.strerror}", file=sys.stderr)
        return 1
    try:
        result = study.run_study(args.seed, args.vms, progress=progress)
    except KeyboardInterrupt:
        print("study: interrupted; nothing written", file=sys.stderr)
        return 130
    png = study.render_png(result)
    outputs: list[tuple[Path, bytes]] = [
        (out / "study.md", study.render_markdown(result).encode()),
        (out / "study.json", study.render_json(result).encode()),
    ]
    if png is not None:
        outputs.append((out / "study.png", png))
    try:
        for path, content in outputs:
            path.write_bytes(content)
        if png is None:
            # With --force, an earlier plot would no longer match the tables.
            (out / "study.png").unlink(missing_ok=True)
    except OSError as error:
        print(f"study: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    if png is None:
        print(PNG_HINT, file=sys.stderr)
    written = [path for path, _ in outputs]
    print(study.summary(result))
    print(f"study: {result.seconds:.1f} s", file=sys.stderr)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
