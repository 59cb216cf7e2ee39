"""An implementation written in Python, loaded by import path, as an adapter.

``module.path:Attribute`` imports a module; ``path/to/file.py:Attribute``
loads a file. The attribute may be dotted (``Outer.Inner``). A class is
instantiated with no arguments; any other object is used as it is. Either
way it must offer the Adapter methods (``info``, ``begin_case``, ``call``,
``end_case``, ``close``). An exception escaping the object is reported as
an AdapterError with its type and message, and every answer is checked
against the protocol's result schema.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from conformance import protocol
from conformance.adapters.base import Adapter, AdapterError, ImplementationInfo

T = TypeVar("T")
REQUIRED_METHODS = ("begin_case", "call", "end_case", "close")
FORM = "MODULE:ATTRIBUTE or PATH/TO/FILE.py:ATTRIBUTE"


def load_object(target: str) -> Any:
    """The object ``target`` names; AdapterError saying what is wrong."""
    location, separator, attribute = target.rpartition(":")
    if not separator or not location or not attribute:
        raise AdapterError(f"python adapter {target!r}: expected {FORM}")
    module = _load_file(location) if _names_a_file(location) else _import(location)
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AdapterError(
                f"python adapter {target!r}: {module.__name__} has no attribute {attribute!r}"
            ) from None
    return found


def load_python_adapter(target: str) -> PythonAdapter:
    """The adapter ``target`` names, instantiated when it is a class."""
    found = load_object(target)
    if inspect.isclass(found):
        try:
            found = found()
        except Exception as error:
            raise AdapterError(
                f"python adapter {target!r}: {found.__name__}() failed: {_describe(error)}"
            ) from None
    return PythonAdapter(found, target)


def _names_a_file(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and name.startswith(error.name):
            raise AdapterError(
                f"python adapter: no module named {error.name!r} (is it on sys.path? "
                f"a file is given as PATH/TO/FILE.py:ATTRIBUTE)"
            ) from None
        raise AdapterError(f"python adapter: importing {name!r} failed: {error}") from None
    except Exception as error:
        raise AdapterError(
            f"python adapter: importing {name!r} failed: {_describe(error)}"
        ) from None


def _load_file(location: str) -> ModuleType:
    path = Path(location).expanduser().resolve()
    if not path.is_file():
        raise AdapterError(f"python adapter: no file {location!r}")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"chainsuite_adapter_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise AdapterError(f"python adapter: {location!r} cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise AdapterError(
            f"python adapter: loading {location!r} failed: {_describe(error)}"
        ) from None
    return module


def _describe(error: BaseException) -> str:
    """An exception as one line, with where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


class PythonAdapter:
    """Guards an in-process implementation: its exceptions and malformed answers are errors."""

    def __init__(self, implementation: Any, origin: str) -> None:
        missing = [
            name for name in REQUIRED_METHODS if not callable(getattr(implementation, name, None))
        ]
        if not hasattr(implementation, "info"):
            missing.insert(0, "info")
        if missing:
            raise AdapterError(
                f"python adapter {origin!r}: {type(implementation).__name__} lacks "
                + ", ".join(missing)
                + " (an adapter offers info, begin_case, call, end_case and close)"
            )
        self.implementation: Adapter = implementation
        self.origin = origin
        info: object = self._guard("info", lambda: implementation.info)
        if not isinstance(info, ImplementationInfo):
            raise AdapterError(
                f"python adapter {origin!r}: info is a {type(info).__name__}, "
                "not conformance.adapters.base.ImplementationInfo"
            )
        problems = protocol.problems(info.to_json(), "implementation")
        if problems:
            raise AdapterError(f"python adapter {origin!r}: info {problems[0]}")
        self._info = info

    @property
    def info(self) -> ImplementationInfo:
        return self._info

    def begin_case(self, directory: Path) -> None:
        self._guard("begin_case", lambda: self.implementation.begin_case(directory))

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        answer = self._guard(op, lambda: self.implementation.call(op, args))
        problems = protocol.problems(answer, "result")
        if problems:
            raise AdapterError(f"the answer to {op!r} is not a valid result: {problems[0]}")
        return answer

    def end_case(self) -> None:
        self._guard("end_case", self.implementation.end_case)

    def close(self) -> None:
        self._guard("close", self.implementation.close)

    def _guard(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except AdapterError:
            raise
        except Exception as error:
            raise AdapterError(f"{what}: {_describe(error)}") from None
