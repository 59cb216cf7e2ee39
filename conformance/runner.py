"""Runs catalogue cases against an adapter and judges each step against the expectation.

Each case runs in its own temporary directory, which holds its images (from
the corpus cache where they can be copied, built in place where they name
their own directory) and is removed afterwards, also when the implementation
crashes or hangs.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from conformance.adapters.base import Adapter, AdapterError
from conformance.catalogue import Case
from images import craft
from images.build import build, build_cached
from images.corpus import entries as corpus_entries
from images.spec import DIR_TOKEN, ChainSpec

DIR_PLACEHOLDER = "$DIR"


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ERROR = "error"


@dataclass(frozen=True)
class StepRecord:
    """One step as it ran: what was asked, what came back, what was expected."""

    index: int
    op: str
    answer: dict[str, Any] | None
    expected: dict[str, Any] | None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "op": self.op,
            "answer": self.answer,
            "expected": self.expected,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    status: Status
    message: str = ""
    steps: tuple[StepRecord, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.case_id,
            "status": self.status.value,
            "message": self.message,
            "seconds": round(self.seconds, 4),
            "steps": [step.to_json() for step in self.steps],
        }


@dataclass
class Runner:
    """Runs cases against one adapter, judging them by one profile's expectations."""

    adapter: Adapter
    expect_profile: str
    cache_root: Path = field(default_factory=lambda: default_cache_root())
    keep_directories: bool = False

    def missing_capabilities(self, case: Case) -> list[str]:
        return sorted(case.requires - self.adapter.info.capabilities)

    def run(self, case: Case) -> CaseResult:
        missing = self.missing_capabilities(case)
        if missing:
            return CaseResult(case.id, Status.SKIPPED, "needs " + ", ".join(missing))
        started = time.perf_counter()
        directory = Path(tempfile.mkdtemp(prefix="chainsuite-case-"))
        try:
            try:
                materialize(case, directory, self.cache_root)
            except Exception as error:
                return CaseResult(case.id, Status.ERROR, f"images could not be made: {error}")
            return self._run_steps(case, directory, started)
        finally:
            if not self.keep_directories:
                shutil.rmtree(directory, ignore_errors=True)

    def _run_steps(self, case: Case, directory: Path, started: float) -> CaseResult:
        records: list[StepRecord] = []
        status, message = Status.PASSED, ""
        try:
            self.adapter.begin_case(directory)
            for index, raw_step in enumerate(case.steps):
                step = substitute(raw_step, directory)
                args = {key: value for key, value in step.items() if key not in ("expect", "note")}
                op = args.pop("op")
                expected = case.expected(step, self.expect_profile)
                answer = self.adapter.call(op, args)
                problem = judge(answer, expected) if expected is not None else None
                records.append(StepRecord(index, op, answer, expected, problem))
                if problem is not None:
                    status = Status.FAILED
                    message = f"step {index + 1} ({op}): {problem}"
                    break
        except AdapterError as error:
            status, message = Status.ERROR, f"the implementation did not answer: {error}"
        finally:
            try:
                self.adapter.end_case()
            except AdapterError as error:
                if status is Status.PASSED:
                    status, message = Status.ERROR, f"cleanup failed: {error}"
        return CaseResult(case.id, status, message, tuple(records), time.perf_counter() - started)


def default_cache_root() -> Path:
    configured = os.environ.get("CHAINSUITE_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chainsuite"


def materialize(case: Case, directory: Path, cache_root: Path) -> None:
    """Puts the case's images into ``directory``."""
    specs = {entry.name: entry for entry in corpus_entries()}
    for source in case.images:
        into = directory / source["into"] if "into" in source else directory
        if "corpus" in source:
            kind, name = source["corpus"].split("/", 1)
            if kind == "chains":
                entry = specs.get(name)
                if entry is None or entry.spec is None:
                    raise ValueError(f"no corpus chain {name!r}")
                _place_spec(entry.spec, into, cache_root)
            else:
                craft.craft(name, into)
        elif "spec" in source:
            _place_spec(ChainSpec.from_json(source["spec"]), into, cache_root)
        else:
            craft.craft(source["crafted"], into)


def _place_spec(spec: ChainSpec, into: Path, cache_root: Path) -> None:
    names_own_directory = any(DIR_TOKEN in (layer.backing or "") for layer in spec.layers)
    if names_own_directory:
        build(spec, into)
        return
    built = build_cached(spec, cache_root / "chains")
    into.mkdir(parents=True, exist_ok=True)
    for item in built.directory.iterdir():
        if item.name.startswith("."):
            continue
        target = into / item.name
        if item.is_symlink():
            os.symlink(os.readlink(item), target)
        elif item.is_dir():
            shutil.copytree(item, target, symlinks=True)
        else:
            shutil.copy2(item, target)


def substitute(value: Any, directory: Path) -> Any:
    """``$DIR`` replaced by the case directory, everywhere in a step."""
    if isinstance(value, str):
        return value.replace(DIR_PLACEHOLDER, str(directory))
    if isinstance(value, list):
        return [substitute(item, directory) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, directory) for key, item in value.items()}
    return value


def judge(answer: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """Why ``answer`` does not have the ``expected`` outcome, or None when it does."""
    error = answer.get("error") or {}
    want_code = expected.get("error")
    want_rc = expected.get("rc", -1 if want_code is not None else 0)
    if answer.get("rc") != want_rc:
        got = f"rc {answer.get('rc')}" + (
            f" ({error.get('code')}: {error.get('message')})" if error else ""
        )
        return (
            f"expected rc {want_rc}" + (f" with {want_code}" if want_code else "") + f", got {got}"
        )
    if want_code is not None and error.get("code") != want_code:
        return f"expected error {want_code}, got {error.get('code') or 'none'}"
    pattern = expected.get("message")
    if pattern is not None and not re.search(pattern, error.get("message", "")):
        return f"message {error.get('message')!r} does not match {pattern!r}"
    if "chain" in expected:
        problem = _judge_chain(answer, expected)
        if problem is not None:
            return problem
    for name, value in expected.get("counters", {}).items():
        got_value = answer.get("counters", {}).get(name)
        if got_value != value:
            return f"counter {name}: expected {value}, got {got_value}"
    return None


def _judge_chain(answer: dict[str, Any], expected: dict[str, Any]) -> str | None:
    want, got = expected["chain"], answer.get("chain")
    if want is None or got is None:
        return None if want is got else f"expected chain {_names(want)}, got {_names(got)}"
    if len(want) != len(got):
        return f"expected {len(want)} layer(s) {_names(want)}, got {len(got)} {_names(got)}"
    for position, (want_layer, got_layer) in enumerate(zip(want, got, strict=True)):
        for key, value in want_layer.items():
            if got_layer.get(key) != value:
                return f"layer {position} {key}: expected {value!r}, got {got_layer.get(key)!r}"
    if "terminated" in expected and answer.get("terminated") != expected["terminated"]:
        return f"expected terminated={expected['terminated']}, got {answer.get('terminated')}"
    return None


def _names(layers: list[dict[str, Any]] | None) -> str:
    if layers is None:
        return "none"
    return "[" + ", ".join(str(layer.get("filename", "?")) for layer in layers) + "]"


ProgressCallback = Callable[[CaseResult], None]


def run_all(
    runner: Runner, cases: list[Case], progress: ProgressCallback | None = None
) -> list[CaseResult]:
    results = []
    for case in cases:
        result = runner.run(case)
        results.append(result)
        if progress is not None:
            progress(result)
    return results
