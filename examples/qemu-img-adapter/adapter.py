#!/usr/bin/env python3
"""A chainsuite implementation: ``qemu-img info --backing-chain``, over the JSON-lines protocol.

Written against conformance/PROTOCOL.md alone, with the standard library only.
Run it under the suite:

    chainsuite run --impl 'cmd:python3 examples/qemu-img-adapter/adapter.py'

It reads one JSON request per line on stdin and writes one JSON reply per line
on stdout; anything else it has to say goes to stderr. Environment:
QEMU_IMG (the program, default ``qemu-img``), QEMU_IMG_TIMEOUT (seconds per
run, default 30).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

PROTOCOL_VERSION = 1
QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IMG_TIMEOUT = float(os.environ.get("QEMU_IMG_TIMEOUT", "30"))

NETWORK_PROTOCOLS = {
    "nbd", "nbd+tcp", "nbd+unix", "http", "https", "ftp", "ftps", "ssh", "iscsi", "iser",
    "rbd", "gluster", "gluster+tcp", "gluster+unix", "gluster+rdma", "nfs", "nvme",
}  # fmt: skip
"""Protocols qemu reaches over a network (qemu-img says 'Unknown protocol' for these when
the block module that handles them is not installed)."""

ERROR_CODES_BY_MESSAGE = [
    ("creates an infinite loop", "backing-loop"),
    ("Failed to connect", "network-backing"),
    ("Could not resolve", "network-backing"),
    ("address resolution failed", "network-backing"),
    ("Network is unreachable", "network-backing"),
    ("No route to host", "network-backing"),
    ("Connection timed out", "network-backing"),
    ("Unknown driver", "unknown-format"),
    ("Backing file name too long", "header-invalid"),
    ("File name too long", "read-failed"),
    ("Permission denied", "permission-denied"),
    ("to be a regular file", "read-failed"),
    ("Is a directory", "read-failed"),
    ("Input/output error", "read-failed"),
    ("Could not parse the JSON options", "backing-name-invalid"),
    ("Invalid JSON object", "backing-name-invalid"),
    ("A block device must be specified", "backing-name-invalid"),
    ("Must specify either driver or file", "backing-name-invalid"),
]
"""A fragment of qemu-img's message and the protocol's error code for it; first match wins."""

OPENED_NAME = re.compile(r"^Could not open '(?P<name>(?:[^']|'(?!: ))*)': ")
UNKNOWN_PROTOCOL = re.compile(r"Unknown protocol '(?P<protocol>[^']*)'")


def qemu_img_version() -> str:
    done = subprocess.run(
        [QEMU_IMG, "--version"], capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT
    )
    words = done.stdout.split()
    return words[2] if len(words) > 2 and words[:2] == ["qemu-img", "version"] else "unknown"


def implementation() -> dict[str, Any]:
    return {
        "name": "qemu-img-example",
        "version": qemu_img_version(),
        "profile": "qemu",
        "capabilities": ["probe"],
        "homepage": "https://www.qemu.org/docs/master/tools/qemu-img.html",
    }


def error_code(message: str, top: str) -> str:
    """The protocol's code for a qemu-img refusal."""
    for fragment, code in ERROR_CODES_BY_MESSAGE:
        if fragment in message:
            return code
    unknown = UNKNOWN_PROTOCOL.search(message)
    if unknown:
        return (
            "network-backing"
            if unknown["protocol"] in NETWORK_PROTOCOLS
            else ("backing-name-invalid")
        )
    opened = OPENED_NAME.match(message)
    if "No such file or directory" in message:
        return "not-found" if opened and opened["name"] == top else "backing-missing"
    return "header-invalid" if opened else "read-failed"


def refusal(stderr: str) -> str:
    """qemu-img's message: its last 'qemu-img:' line, without the prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    mine = [line for line in lines if line.startswith("qemu-img: ")]
    if mine:
        return mine[-1].removeprefix("qemu-img: ")
    return " ".join(lines) or "qemu-img failed without a message"


def failure(code: str, message: str) -> dict[str, Any]:
    return {"rc": -1, "error": {"code": code, "message": message}}


def probe(request: dict[str, Any], directory: str | None) -> dict[str, Any]:
    path = request["path"]
    command = [QEMU_IMG, "info", "--backing-chain", "--output=json"]
    if request.get("format"):
        command += ["-f", request["format"]]
    command.append(path)
    try:
        done = subprocess.run(
            command,
            cwd=directory,
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=QEMU_IMG_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return failure("read-failed", f"qemu-img gave no answer within {QEMU_IMG_TIMEOUT:g} s")
    if done.returncode != 0:
        message = refusal(done.stderr)
        return failure(error_code(message, path), message)
    layers = json.loads(done.stdout)
    chain = [dict(layer, index=index) for index, layer in enumerate(layers)]
    return {"rc": 0, "chain": chain, "terminated": True}


OPERATIONS = {"probe": probe}
"""The operations this implementation does; every other one is answered 'unsupported'."""


class Session:
    """The state between requests: the current case's directory."""

    def __init__(self) -> None:
        self.directory: str | None = None

    def reply_to(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to one request (None: shutdown, exit without a reply)."""
        command = request.get("cmd")
        if "seq" in request:
            handler = OPERATIONS.get(str(command))
            if handler is None:
                answer = failure("unsupported", f"operation {command!r} is not supported")
            else:
                answer = handler(request, self.directory)
            return {"seq": request["seq"], **answer}
        if command == "start":
            if request.get("version") != PROTOCOL_VERSION:
                sys.exit(f"protocol version {request.get('version')!r} is not supported (1 is)")
            return {"version": PROTOCOL_VERSION, "implementation": implementation()}
        if command == "begin-case":
            self.directory = request["directory"]
            return {"ok": True}
        if command == "end-case":
            self.directory = None
            return {"ok": True}
        if command == "shutdown":
            return None
        return {"ok": False, "error": {"code": "bad-request", "message": f"unknown {command!r}"}}


def main() -> int:
    session = Session()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as error:
            reply: dict[str, Any] | None = {
                "ok": False,
                "error": {"code": "bad-request", "message": f"not JSON: {error}"},
            }
        else:
            reply = session.reply_to(request)
            if reply is None:
                return 0
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
