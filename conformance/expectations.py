"""Known failures of an implementation: cases expected to fail, each with a reason and a link.

A JSON file of the form::

    {"implementation": "libvirt 9.0",
     "known-failures": [{"id": "lifecycle.restart.keeps-chain",
                         "reason": "what differs and why", "link": "https://..."}]}

A listed case that fails is reported as an expected failure; a listed case
that passes is reported as an unexpected pass (strict): the list must be kept
true.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ExpectationsError(Exception):
    """A file that is not a list of known failures."""


@dataclass(frozen=True)
class KnownFailure:
    case_id: str
    reason: str
    link: str = ""


def load_expectations(path: Path) -> dict[str, KnownFailure]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExpectationsError(f"{path}: cannot read known failures: {error}") from None
    items = document.get("known-failures") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ExpectationsError(f"{path}: expected an object with a 'known-failures' list")
    known: dict[str, KnownFailure] = {}
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not item.get("id") or not item.get("reason"):
            raise ExpectationsError(f"{path}: entry {number} needs an 'id' and a 'reason'")
        known[item["id"]] = KnownFailure(item["id"], item["reason"], item.get("link", ""))
    return known
