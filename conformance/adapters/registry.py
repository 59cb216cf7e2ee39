"""From an ``--impl`` spec to an adapter.

The spec forms:

- ``reference`` or ``reference:PROFILE``: the simulator under a profile
  (default ``libvirt-modern``);
- ``qemu-img``: the installed qemu-img (profile ``qemu``, probe only);
- ``python:MODULE:ATTRIBUTE`` or ``python:PATH/TO/FILE.py:ATTRIBUTE``: an
  object in this process (a class is instantiated with no arguments);
- ``cmd:COMMAND LINE``: an executable speaking the JSON-lines protocol,
  split as a shell would split it (no shell runs it).
"""

from __future__ import annotations

import shlex

from conformance.adapters.base import Adapter, AdapterError

SPEC_FORMS: tuple[tuple[str, str], ...] = (
    ("reference[:PROFILE]", "the reference simulator under PROFILE (default libvirt-modern)"),
    ("qemu-img", "the installed qemu-img info --backing-chain (profile qemu, probe only)"),
    ("python:MODULE:ATTRIBUTE", "a Python adapter object, imported (a class is instantiated)"),
    ("python:FILE.py:ATTRIBUTE", "a Python adapter object, loaded from a file"),
    ("cmd:COMMAND LINE", "an executable speaking the JSON-lines protocol (PROTOCOL.md)"),
    ("libvirt[:URI]", "a real libvirt daemon (default qemu:///system) through libvirt-python"),
)
"""Every form ``open_adapter`` accepts, with what it opens."""

DEFAULT_CMD_TIMEOUT = 60.0


def _forms() -> str:
    return "; ".join(form for form, _ in SPEC_FORMS)


def open_adapter(spec: str, *, timeout: float | None = None) -> Adapter:
    """The adapter ``spec`` names; AdapterError naming the accepted forms when it names none.

    ``timeout`` bounds each answer of a ``cmd:`` implementation and each qemu-img run.
    """
    spec = spec.strip()
    kind, separator, rest = spec.partition(":")
    if kind == "reference":
        from conformance.adapters.reference import ReferenceAdapter

        if separator and not rest:
            raise AdapterError(f"adapter {spec!r}: no profile after 'reference:'")
        return ReferenceAdapter(rest) if rest else ReferenceAdapter()
    if kind == "qemu-img":
        if separator:
            raise AdapterError(f"adapter {spec!r}: 'qemu-img' takes no argument")
        from conformance.adapters.qemu_img import DEFAULT_TIMEOUT, QemuImgAdapter

        return QemuImgAdapter(timeout if timeout is not None else DEFAULT_TIMEOUT)
    if kind == "python":
        from conformance.adapters.python import FORM, load_python_adapter

        if not rest:
            raise AdapterError(f"adapter {spec!r}: expected python:{FORM}")
        return load_python_adapter(rest)
    if kind == "cmd":
        from conformance.adapters.cmd import CmdAdapter

        try:
            command = shlex.split(rest)
        except ValueError as error:
            raise AdapterError(
                f"adapter {spec!r}: the command line is not valid: {error}"
            ) from None
        if not command:
            raise AdapterError(f"adapter {spec!r}: no command after 'cmd:'")
        return CmdAdapter(command, timeout if timeout is not None else DEFAULT_CMD_TIMEOUT)
    if kind == "libvirt":
        from conformance.adapters.libvirt import DEFAULT_URI, LibvirtAdapter

        return LibvirtAdapter(rest or DEFAULT_URI)
    raise AdapterError(f"unknown implementation {spec!r}; the forms are: {_forms()}")


def known_adapters() -> list[tuple[str, str]]:
    """Specs that open without further arguments, each with what it is (``chainsuite impls``)."""
    from simulator.profiles import PROFILES

    known = [("reference", "the reference simulator under its default profile, libvirt-modern")]
    for name, profile in PROFILES.items():
        known.append((f"reference:{name}", f"the reference simulator: {profile.summary}"))
    known.append(("qemu-img", "the installed qemu-img info --backing-chain (probe only)"))
    known.append(("libvirt", "the libvirt daemon on qemu:///system, driving real qemu"))
    return known
