"""The JSON-lines protocol between the suite and an implementation in another process.

One JSON object per line: the suite writes requests to the implementation's
stdin and reads one reply line per request from its stdout. Version 1 has a
handshake (``start``), ``begin-case``, one command per operation (carrying a
``seq``), ``end-case`` and ``shutdown``. ``conformance/PROTOCOL.md`` is the
implementer's reference; ``schema/protocol.schema.json`` is its machine form.

``python -m conformance.protocol SPEC`` serves any adapter the registry can
open (``reference:qemu``, ``python:...``) over this protocol on stdin/stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import IO, Any

import jsonschema

from conformance.adapters.base import Adapter, AdapterError, ImplementationInfo, failed
from conformance.catalogue import OP_CAPABILITIES

PROTOCOL_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schema") / "protocol.schema.json"

OPERATIONS: tuple[str, ...] = tuple(OP_CAPABILITIES)
"""Every operation a case step can name; each is a command of its own."""
CONTROL_COMMANDS = ("start", "begin-case", "end-case", "shutdown")
"""Commands without a ``seq``. ``start`` without a ``seq`` is the handshake."""

UNSUPPORTED = "unsupported"
"""The error code of an operation the implementation does not offer."""
BAD_REQUEST = "bad-request"
"""The error code of a request the implementation could not read."""


class ProtocolError(ValueError):
    """A message that breaks the protocol: not JSON, not an object, or not the schema's shape."""


@cache
def schema() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return document


@cache
def _validator(definition: str) -> jsonschema.Draft202012Validator:
    definitions = schema()["$defs"]
    if definition not in definitions:
        raise KeyError(definition)
    return jsonschema.Draft202012Validator({"$defs": definitions, "$ref": f"#/$defs/{definition}"})


def known_capabilities() -> frozenset[str]:
    """The capability names protocol version 1 knows."""
    return frozenset(schema()["$defs"]["capability"]["enum"])


def problems(message: Any, definition: str) -> list[str]:
    """Why ``message`` is not a ``definition`` of the schema (empty when it is)."""
    errors = sorted(
        _validator(definition).iter_errors(message), key=lambda error: list(error.absolute_path)
    )
    found = []
    for error in errors:
        where = "/".join(str(part) for part in error.absolute_path) or "(top)"
        found.append(f"at {where}: {error.message}")
    return found


def check(message: Any, definition: str) -> None:
    """Raises ProtocolError naming the first way ``message`` is not a ``definition``."""
    found = problems(message, definition)
    if found:
        raise ProtocolError(f"not a valid {definition}: {found[0]}")


# -- lines -------------------------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line (ASCII: names that are not UTF-8 travel escaped)."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> dict[str, Any]:
    """One line as a message; ProtocolError unless it is a JSON object."""
    text = line.decode("utf-8", "surrogateescape") if isinstance(line, bytes) else line
    if not text.strip():
        raise ProtocolError("an empty line")
    try:
        message = json.loads(text)
    except ValueError as error:
        raise ProtocolError(f"not JSON ({error}): {_excerpt(text)}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"not a JSON object: {_excerpt(text)}")
    return message


def _excerpt(text: str, limit: int = 200) -> str:
    text = text.rstrip("\n")
    return repr(text if len(text) <= limit else text[:limit] + "...")


# -- requests ----------------------------------------------------------------------------


def start_request() -> dict[str, Any]:
    return {"cmd": "start", "version": PROTOCOL_VERSION}


def begin_case_request(directory: Path | str) -> dict[str, Any]:
    return {"cmd": "begin-case", "directory": str(directory)}


def operation_request(seq: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """The command for one step: ``{"cmd": op, "seq": seq, **args}``."""
    if "cmd" in args or "seq" in args:
        raise ProtocolError(f"operation {op!r}: 'cmd' and 'seq' are not arguments")
    return {"cmd": op, "seq": seq, **args}


def end_case_request() -> dict[str, Any]:
    return {"cmd": "end-case"}


def shutdown_request() -> dict[str, Any]:
    return {"cmd": "shutdown"}


def is_operation(request: dict[str, Any]) -> bool:
    """An operation carries a ``seq``; a control command does not."""
    return "seq" in request


_CONTROL_DEFINITIONS = {
    "start": "startRequest",
    "begin-case": "beginCaseRequest",
    "end-case": "endCaseRequest",
    "shutdown": "shutdownRequest",
}


def check_request(request: dict[str, Any]) -> None:
    """Raises ProtocolError unless ``request`` is a valid request of this version."""
    command = request.get("cmd")
    if not isinstance(command, str):
        raise ProtocolError("a request needs a 'cmd' string")
    if is_operation(request):
        check(request, "operationRequest")
    elif command in _CONTROL_DEFINITIONS:
        check(request, _CONTROL_DEFINITIONS[command])
    else:
        raise ProtocolError(f"unknown command {command!r} (an operation needs a 'seq')")


# -- replies -----------------------------------------------------------------------------


def start_reply(info: ImplementationInfo) -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "implementation": info.to_json()}


def info_from_start_reply(reply: dict[str, Any]) -> ImplementationInfo:
    """The implementation a valid start reply describes."""
    check(reply, "startReply")
    implementation = dict(reply["implementation"])
    return ImplementationInfo(
        name=implementation.pop("name"),
        version=implementation.pop("version"),
        profile=implementation.pop("profile"),
        capabilities=frozenset(implementation.pop("capabilities")),
        details=implementation,
    )


def unsupported_answer(seq: int | None, op: str) -> dict[str, Any]:
    answer = failed(UNSUPPORTED, f"operation {op!r} is not supported")
    return answer if seq is None else {"seq": seq, **answer}


# -- serving an adapter ------------------------------------------------------------------


def serve(adapter: Adapter, requests: IO[bytes], replies: IO[bytes]) -> int:
    """Answers requests from ``requests`` with ``adapter`` until shutdown or end of input.

    The exit status: 0 after shutdown or end of input, 1 when the adapter
    failed to answer (its reason goes to stderr, as a crash would).
    """

    def reply(message: dict[str, Any]) -> None:
        replies.write(encode(message))
        replies.flush()

    for line in requests:
        if not line.strip():
            continue
        try:
            request = decode(line)
            if is_operation(request) and request.get("cmd") not in OPERATIONS:
                reply(unsupported_answer(_seq_of(line), str(request.get("cmd"))))
                continue
            check_request(request)
        except ProtocolError as error:
            seq = _seq_of(line)
            refusal = failed(BAD_REQUEST, str(error))
            reply({"seq": seq, **refusal} if seq is not None else {"ok": False, **refusal})
            continue
        command = request["cmd"]
        try:
            if is_operation(request):
                reply(_answer(adapter, request))
            elif command == "start":
                reply(start_reply(adapter.info))
            elif command == "begin-case":
                adapter.begin_case(Path(request["directory"]))
                reply({"ok": True})
            elif command == "end-case":
                adapter.end_case()
                reply({"ok": True})
            else:
                adapter.close()
                return 0
        except AdapterError as error:
            sys.stderr.write(f"{adapter.info.name}: {error}\n")
            return 1
    adapter.close()
    return 0


def _answer(adapter: Adapter, request: dict[str, Any]) -> dict[str, Any]:
    args = {key: value for key, value in request.items() if key not in ("cmd", "seq")}
    seq: int = request["seq"]
    answer = adapter.call(request["cmd"], args)
    return {**answer, "seq": seq}


def _seq_of(line: bytes) -> int | None:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m conformance.protocol SPEC``: serve an adapter on stdin/stdout."""
    from conformance.adapters.registry import open_adapter

    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        sys.stderr.write("usage: python -m conformance.protocol ADAPTER-SPEC\n")
        return 2
    try:
        adapter = open_adapter(arguments[0])
    except AdapterError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    return serve(adapter, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main())
