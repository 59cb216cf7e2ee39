"""Frozen values that are cheap to make and to copy.

A simulation makes hundreds of thousands of layers, header readings and pending
images. dataclasses' frozen ``__init__`` sets each field through
``object.__setattr__``, a call per field: a sixth of the prober's time per layer.
``quick_init`` gives such a class an ``__init__`` that fills the instance's
``__dict__`` directly, and ``evolve`` copies one with some fields changed. Both
suit frozen dataclasses that validate nothing in ``__init__``; the instances stay
frozen (assigning a field still raises) and compare and hash as before.
"""

from __future__ import annotations

import dataclasses
import types
from typing import TypeVar

_Value = TypeVar("_Value")
_Class = TypeVar("_Class", bound=type)


def quick_init(cls: _Class) -> _Class:
    """Replaces the ``__init__`` of the frozen dataclass ``cls`` with a direct one.

    The fields keep their order and defaults. Fields with a default factory, with
    ``init=False`` or keyword-only are not supported, nor a ``__post_init__``: a
    TypeError says which.
    """
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__, which quick_init would skip")
    namespace: dict[str, object] = {}
    parameters, assignments = [], []
    for field in dataclasses.fields(cls):
        if not field.init or field.kw_only or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: quick_init needs a plain field")
        if field.default is dataclasses.MISSING:
            parameters.append(field.name)
        else:
            namespace[f"_default_{field.name}"] = field.default
            parameters.append(f"{field.name}=_default_{field.name}")
        assignments.append(f"    _instance_fields[{field.name!r}] = {field.name}")
    source = (
        f"def __init__(self, {', '.join(parameters)}):\n"
        "    _instance_fields = self.__dict__\n" + "\n".join(assignments) + "\n"
    )
    exec(source, namespace)  # the way dataclasses makes its own __init__
    init = namespace["__init__"]
    assert isinstance(init, types.FunctionType)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses a method assigned directly
    return cls


def evolve(value: _Value, **changes: object) -> _Value:
    """``dataclasses.replace`` for such values: a copy of the fields with ``changes``
    applied, without calling ``__init__``."""
    copy = object.__new__(type(value))
    copy.__dict__.update(value.__dict__)
    copy.__dict__.update(changes)
    return copy
