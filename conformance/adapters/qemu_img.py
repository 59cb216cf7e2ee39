"""The real ``qemu-img info --backing-chain`` as an adapter: profile ``qemu``, probe only.

Each probe runs qemu-img once, in the case directory, with a timeout. Its
JSON list becomes the answer's chain, with qemu-img's key names and an
``index`` for each layer's position; a chain qemu-img prints is always
terminated. A refusal keeps qemu-img's message and gets the stable error
code the ``qemu`` profile of the reference gives the same image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conformance.adapters.base import AdapterError, ImplementationInfo, failed, ok
from images import qemu_img
from simulator.model import ErrorCode
from simulator.prober import QEMU_NETWORK_PROTOCOLS

DEFAULT_TIMEOUT = 30.0
QEMU_IMG_PREFIX = "qemu-img: "
_OPENED_NAME = re.compile(r"^Could not open '(?P<name>(?:[^']|'(?!: ))*)': ")
_UNKNOWN_PROTOCOL = re.compile(r"Unknown protocol '(?P<protocol>[^']*)'")

_BY_MESSAGE: tuple[tuple[str, ErrorCode], ...] = (
    ("creates an infinite loop", ErrorCode.BACKING_LOOP),
    ("Failed to connect", ErrorCode.NETWORK_BACKING),
    ("Could not resolve", ErrorCode.NETWORK_BACKING),
    ("address resolution failed", ErrorCode.NETWORK_BACKING),
    ("Network is unreachable", ErrorCode.NETWORK_BACKING),
    ("No route to host", ErrorCode.NETWORK_BACKING),
    ("Connection timed out", ErrorCode.NETWORK_BACKING),
    ("Unknown driver", ErrorCode.UNKNOWN_FORMAT),
    ("Backing file name too long", ErrorCode.HEADER_INVALID),
    ("File name too long", ErrorCode.READ_FAILED),
    ("Permission denied", ErrorCode.PERMISSION_DENIED),
    ("to be a regular file", ErrorCode.READ_FAILED),
    ("Is a directory", ErrorCode.READ_FAILED),
    ("Input/output error", ErrorCode.READ_FAILED),
    ("Could not parse the JSON options", ErrorCode.BACKING_NAME_INVALID),
    ("Invalid JSON object", ErrorCode.BACKING_NAME_INVALID),
    ("A block device must be specified", ErrorCode.BACKING_NAME_INVALID),
    ("Must specify either driver or file", ErrorCode.BACKING_NAME_INVALID),
)
"""Substrings of qemu-img's message and the code they mean, first match wins."""


def error_code_for(message: str, top: str) -> ErrorCode:
    """The stable code of a qemu-img refusal, from its message.

    ``top`` is the path qemu-img was given: a missing file of that name is the
    top (not-found), any other missing file is below it (backing-missing).
    An unknown protocol that qemu knows as a network protocol (its block
    module is not installed) means the chain continues on a server.
    """
    for fragment, code in _BY_MESSAGE:
        if fragment in message:
            return code
    unknown_protocol = _UNKNOWN_PROTOCOL.search(message)
    if unknown_protocol is not None:
        if unknown_protocol["protocol"] in QEMU_NETWORK_PROTOCOLS:
            return ErrorCode.NETWORK_BACKING
        return ErrorCode.BACKING_NAME_INVALID
    if "No such file or directory" in message:
        opened = _OPENED_NAME.match(message)
        is_top = opened is not None and opened["name"] == top
        return ErrorCode.NOT_FOUND if is_top else ErrorCode.BACKING_MISSING
    if _OPENED_NAME.match(message):
        return ErrorCode.HEADER_INVALID
    return ErrorCode.READ_FAILED


def refusal_message(stderr: str) -> str:
    """qemu-img's own message: its last ``qemu-img:`` line, other lines appended as notes."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    main = [line for line in lines if line.startswith(QEMU_IMG_PREFIX)]
    if not main:
        return " ".join(lines) or "qemu-img failed without a message"
    notes = [line for line in lines if line != main[-1]]
    message = main[-1].removeprefix(QEMU_IMG_PREFIX)
    return message + (f" ({'; '.join(notes)})" if notes else "")


def chain_answer(layers: Any) -> dict[str, Any]:
    """qemu-img's JSON list as an answer: its layers, each with its position as ``index``."""
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise AdapterError(f"qemu-img printed JSON that is not a list of images: {layers!r:.200}")
    chain = [{**layer, "index": index} for index, layer in enumerate(layers)]
    return ok(chain=chain, terminated=True)


class QemuImgAdapter:
    """Probes with the installed qemu-img; every other operation is unsupported."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        try:
            version = qemu_img.version(timeout=timeout)
            self.executable = qemu_img.executable()
        except qemu_img.QemuImgError as error:
            raise AdapterError(str(error)) from None
        self._info = ImplementationInfo(
            name="qemu-img",
            version=version,
            profile="qemu",
            capabilities=frozenset({"probe"}),
            details={"executable": self.executable},
        )
        self.directory: Path | None = None

    @property
    def info(self) -> ImplementationInfo:
        return self._info

    def begin_case(self, directory: Path) -> None:
        self.directory = directory

    def end_case(self) -> None:
        self.directory = None

    def close(self) -> None:
        self.directory = None

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op != "probe":
            return failed("unsupported", f"qemu-img does not do {op!r}; it only probes")
        if not isinstance(args.get("path"), str):
            return failed("bad-request", "probe needs a 'path'")
        return self.probe(args["path"], args.get("format"))

    def probe(self, path: str, fmt: str | None = None) -> dict[str, Any]:
        """``qemu-img info --backing-chain --output=json [-f FMT] PATH`` as an answer."""
        command = ["info", "--backing-chain", "--output=json"]
        if fmt is not None:
            command += ["-f", fmt]
        command.append(path)
        try:
            done = qemu_img.run(command, cwd=self.directory, timeout=self.timeout)
        except (qemu_img.QemuImgTimeout, qemu_img.QemuImgMissing) as error:
            raise AdapterError(str(error)) from None
        except qemu_img.QemuImgError as error:
            message = refusal_message(error.stderr)
            answer = failed(error_code_for(message, path).value, message)
            opened = _OPENED_NAME.match(message)
            if opened is not None:
                answer["error"]["path"] = opened["name"]
            return answer
        try:
            layers = json.loads(done.stdout)
        except ValueError as error:
            raise AdapterError(f"qemu-img printed something that is not JSON: {error}") from None
        return chain_answer(layers)
