"""quick_init and evolve keep a frozen dataclass's behaviour: only making one is cheaper."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from simulator.values import evolve, quick_init


@dataclass(frozen=True)
class Plain:
    name: str
    size: int = 0
    tags: tuple[str, ...] = ()
    note: str | None = field(default=None, compare=False)


@quick_init
@dataclass(frozen=True)
class Quick:
    name: str
    size: int = 0
    tags: tuple[str, ...] = ()
    note: str | None = field(default=None, compare=False)


def as_plain(value: Quick) -> Plain:
    return Plain(value.name, value.size, value.tags, value.note)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("a",), {}), (("a", 3), {}), (("a",), {"tags": ("x",), "note": "n"}), ((), {"name": "b"})],
)
def test_made_the_same_way_as_the_dataclass(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)  # type: ignore[arg-type]
    assert dataclasses.asdict(quick) == dataclasses.asdict(plain)
    assert repr(quick) == repr(plain).replace("Plain", "Quick")
    assert hash(quick) == hash(Quick(*args, **kwargs))  # type: ignore[arg-type]
    assert quick == Quick(*args, **kwargs)  # type: ignore[arg-type]


def test_compares_by_the_compared_fields_only() -> None:
    assert Quick("a", note="one") == Quick("a", note="two")
    assert Quick("a") != Quick("a", 1)


def test_stays_frozen() -> None:
    value = Quick("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.size = 2  # type: ignore[misc]


def test_wrong_arguments_fail_as_a_function_call_does() -> None:
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick("a", colour="red")  # type: ignore[call-arg]


def test_refuses_what_it_cannot_make() -> None:
    @dataclass(frozen=True)
    class WithFactory:
        items: list[int] = field(default_factory=list)

    @dataclass
    class NotFrozen:
        name: str

    @dataclass(frozen=True)
    class Checked:
        name: str

        def __post_init__(self) -> None:
            pass

    for cls in (WithFactory, NotFrozen, Checked):
        with pytest.raises(TypeError):
            quick_init(cls)


def test_evolve_copies_with_changes_and_leaves_the_original() -> None:
    original = Quick("a", 1, ("x",))
    changed = evolve(original, size=2)
    assert (changed, original) == (Quick("a", 2, ("x",)), Quick("a", 1, ("x",)))
    assert as_plain(changed) == dataclasses.replace(as_plain(original), size=2)
