"""What every adapter offers the runner: who it is, what it can do, and one call per step.

A step is an operation name and its arguments (the case's JSON, with ``$DIR``
replaced); the answer is a JSON object: ``{"rc": 0}`` or ``{"rc": -1, "error":
{"code": ..., "message": ...}}``, plus ``"chain"`` (a list of layers, or null
when nothing is cached) and ``"terminated"`` for the operations that return a
chain. This is the same shape the JSON-lines protocol carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class AdapterError(Exception):
    """The implementation failed to answer (crashed, hung, spoke nonsense)."""


@dataclass(frozen=True)
class ImplementationInfo:
    """An implementation's handshake: its name and version, its profile, its capabilities."""

    name: str
    version: str
    profile: str
    capabilities: frozenset[str]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "profile": self.profile,
            "capabilities": sorted(self.capabilities),
            **self.details,
        }


class Adapter(Protocol):
    """An implementation the suite can run cases against."""

    @property
    def info(self) -> ImplementationInfo: ...

    def begin_case(self, directory: Path) -> None:
        """A case starts; its images are in ``directory``."""
        ...

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Performs one step; raises AdapterError when the implementation does not answer."""
        ...

    def end_case(self) -> None:
        """The case is over: remove everything it created (domains, jobs, files)."""
        ...

    def close(self) -> None: ...


def ok(**extra: Any) -> dict[str, Any]:
    return {"rc": 0, **extra}


def failed(code: str, message: str, rc: int = -1) -> dict[str, Any]:
    return {"rc": rc, "error": {"code": code, "message": message}}
