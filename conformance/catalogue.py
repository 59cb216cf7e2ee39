"""The case catalogue: data files under ``conformance/cases``, checked against a JSON schema.

A case names its images, its steps and the outcome each step must have under
each profile. The catalogue carries a version; a changed expectation is a new
version, and a case id never changes meaning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

CASES_DIR = Path(__file__).with_name("cases")
SCHEMA_PATH = Path(__file__).with_name("schema") / "case-file.schema.json"
VERSION_FILE = "catalogue.json"

OP_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "probe": ("probe",),
    "define": ("lifecycle",),
    "create": ("lifecycle", "transient"),
    "undefine": ("lifecycle",),
    "start": ("lifecycle",),
    "destroy": ("lifecycle",),
    "attach": ("lifecycle", "hotplug"),
    "detach": ("lifecycle", "hotplug"),
    "change-media": ("lifecycle", "media-change"),
    "snapshot": ("lifecycle", "snapshot"),
    "block-pull": ("lifecycle", "block-pull"),
    "block-commit": ("lifecycle", "block-commit"),
    "block-copy": ("lifecycle", "block-copy"),
    "job-wait": ("lifecycle",),
    "job-step": ("lifecycle", "job-events"),
    "deliver": ("lifecycle", "job-events"),
    "pivot": ("lifecycle",),
    "abort": ("lifecycle",),
    "daemon-restart": ("lifecycle", "daemon-restart"),
    "chain": ("lifecycle",),
    "determine-chain": ("lifecycle", "determine-chain"),
    "fault": ("lifecycle", "fault-injection"),
    "counters": ("lifecycle", "counters"),
}
"""What an implementation must be able to do for each operation a step names."""


class CatalogueError(Exception):
    """A case file that is not valid, or two cases with one id."""


@dataclass(frozen=True)
class Case:
    """One case, as its file states it."""

    id: str
    description: str
    provenance: tuple[dict[str, str], ...]
    images: tuple[dict[str, Any], ...]
    steps: tuple[dict[str, Any], ...]
    extra_requirements: tuple[str, ...]
    source: str
    """The file the case comes from, relative to the cases directory."""

    @property
    def requires(self) -> frozenset[str]:
        needed = set(self.extra_requirements)
        for step in self.steps:
            needed.update(OP_CAPABILITIES[step["op"]])
            if step.get("fault") == "unreadable":
                needed.add("unreadable-files")
            if step["op"] == "block-commit" and step.get("active"):
                needed.add("active-commit")
        return frozenset(needed)

    @property
    def kind(self) -> str:
        return self.id.split(".", 1)[0]

    def expected(self, step: dict[str, Any], profile: str) -> dict[str, Any] | None:
        """The outcome a step must have under ``profile`` (None: the step checks nothing)."""
        expect = step.get("expect")
        if expect is None:
            return None
        outcome: dict[str, Any] = expect.get(profile, expect["default"])
        return outcome

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "provenance": list(self.provenance),
            "images": list(self.images),
            "steps": list(self.steps),
        }
        if self.extra_requirements:
            document["requires"] = list(self.extra_requirements)
        return document


@dataclass(frozen=True)
class Catalogue:
    version: int
    cases: tuple[Case, ...]

    def get(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_file(document: Any, source: str) -> None:
    """Raises CatalogueError naming the first problem of a case file and where it is."""
    errors = sorted(_validator().iter_errors(document), key=lambda error: list(error.path))
    if errors:
        first = errors[0]
        where = "/".join(str(part) for part in first.absolute_path) or "(top)"
        raise CatalogueError(f"{source}: at {where}: {first.message}")


def load_cases(document: Any, source: str) -> list[Case]:
    """The cases of one parsed case file, after validation."""
    validate_file(document, source)
    return [
        Case(
            id=item["id"],
            description=item["description"],
            provenance=tuple(item["provenance"]),
            images=tuple(item["images"]),
            steps=tuple(item["steps"]),
            extra_requirements=tuple(item.get("requires", ())),
            source=source,
        )
        for item in document["cases"]
    ]


def load(directory: Path = CASES_DIR, extra_files: Iterable[Path] = ()) -> Catalogue:
    """Every case under ``directory`` (and in ``extra_files``), ids checked unique."""
    try:
        version = int(json.loads((directory / VERSION_FILE).read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CatalogueError(
            f"{directory / VERSION_FILE}: no catalogue version ({error})"
        ) from None
    files = sorted(path for path in directory.rglob("*.json") if path.name != VERSION_FILE)
    cases: list[Case] = []
    for path in [*files, *extra_files]:
        source = str(path.relative_to(directory)) if path.is_relative_to(directory) else str(path)
        try:
            document = json.loads(path.read_text())
        except ValueError as error:
            raise CatalogueError(f"{source}: not JSON: {error}") from None
        cases.extend(load_cases(document, source))
    seen: dict[str, str] = {}
    for case in cases:
        if case.id in seen:
            raise CatalogueError(f"case id {case.id!r} is in {seen[case.id]} and {case.source}")
        seen[case.id] = case.source
    return Catalogue(version, tuple(cases))
