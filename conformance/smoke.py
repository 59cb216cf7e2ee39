"""``chainsuite smoke``: tells a broken adapter from an implementation that fails cases.

The smoke test checks the least an implementation must get right before its
case results mean anything: the handshake's shape, capabilities the
protocol knows, a probe of a tiny raw file answering a one-layer chain, an
unknown operation answering ``unsupported``, answers that echo their seq,
``begin-case``/``end-case`` acknowledged, and an exit on ``shutdown``. A
``cmd:`` implementation is checked message by message on the wire; any other
is checked through its adapter. The result is a list of problems, empty when
the implementation passes.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from conformance import protocol
from conformance.adapters.base import Adapter, AdapterError, ImplementationInfo
from conformance.adapters.cmd import HarnessProcess

TINY_RAW_NAME = "smoke.raw"
TINY_RAW_SIZE = 64 * 1024
UNKNOWN_OPERATION = "no-such-operation"
DEFAULT_TIMEOUT = 30.0


def smoke(adapter_spec: str, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Every problem found with the implementation ``adapter_spec`` names (none: it passes)."""
    directory = Path(tempfile.mkdtemp(prefix="chainsuite-smoke-"))
    try:
        (directory / TINY_RAW_NAME).write_bytes(bytes(TINY_RAW_SIZE))
        kind, _, command_line = adapter_spec.strip().partition(":")
        if kind == "cmd":
            return _smoke_wire(command_line, directory, timeout)
        return _smoke_adapter(adapter_spec, directory, timeout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_info(info: dict[str, Any]) -> list[str]:
    """Problems with an implementation's description (the handshake's ``implementation``)."""
    found = [
        f"handshake: implementation {problem}"
        for problem in protocol.problems(info, "implementation")
    ]
    if found:
        return found
    unknown = sorted(set(info["capabilities"]) - protocol.known_capabilities())
    if unknown:
        found.append(
            "handshake: capabilities the protocol does not know: "
            + ", ".join(unknown)
            + " (known: "
            + ", ".join(sorted(protocol.known_capabilities()))
            + ")"
        )
    return found


def check_probe_answer(answer: dict[str, Any], path: str) -> list[str]:
    """Problems with the answer to a probe of a tiny raw file given as raw."""
    if answer.get("rc") != 0:
        error = answer.get("error") or {}
        return [
            f"probe of a {TINY_RAW_SIZE}-byte raw file: rc {answer.get('rc')} "
            f"({error.get('code')}: {error.get('message')}), expected rc 0"
        ]
    chain = answer.get("chain")
    if not isinstance(chain, list) or len(chain) != 1:
        count = len(chain) if isinstance(chain, list) else chain
        return [f"probe of a raw file: expected a one-layer chain, got {count!r} layer(s)"]
    found = []
    layer = chain[0]
    if layer.get("filename") != path:
        found.append(f"probe of a raw file: filename {layer.get('filename')!r}, expected {path!r}")
    if layer.get("format") != "raw":
        found.append(f"probe of a raw file: format {layer.get('format')!r}, expected 'raw'")
    if layer.get("index") != 0:
        found.append(f"probe of a raw file: index {layer.get('index')!r}, expected 0")
    if answer.get("terminated") is not True:
        found.append("probe of a raw file: expected terminated true (a raw image has no backing)")
    return found


def check_unsupported_answer(answer: dict[str, Any]) -> list[str]:
    error = answer.get("error") or {}
    if answer.get("rc") != -1 or error.get("code") != protocol.UNSUPPORTED:
        return [
            f"an unknown operation: expected rc -1 with error 'unsupported', got rc "
            f"{answer.get('rc')!r} with {error.get('code')!r}"
        ]
    return []


def _probe_request_args(directory: Path) -> dict[str, Any]:
    return {"path": str(directory / TINY_RAW_NAME), "format": "raw"}


def _smoke_adapter(spec: str, directory: Path, timeout: float) -> list[str]:
    from conformance.adapters.registry import open_adapter

    try:
        adapter = open_adapter(spec, timeout=timeout)
    except AdapterError as error:
        return [f"the implementation does not start: {error}"]
    found = _smoke_through(adapter, directory)
    try:
        adapter.close()
    except AdapterError as error:
        found.append(f"closing the implementation failed: {error}")
    return found


def _smoke_through(adapter: Adapter, directory: Path) -> list[str]:
    info: ImplementationInfo = adapter.info
    found = check_info(info.to_json())
    try:
        adapter.begin_case(directory)
        if "probe" in info.capabilities:
            args = _probe_request_args(directory)
            answer = adapter.call("probe", args)
            found += _result_problems(answer, "probe")
            found += check_probe_answer(answer, args["path"])
        answer = adapter.call(UNKNOWN_OPERATION, {})
        found += _result_problems(answer, UNKNOWN_OPERATION)
        found += check_unsupported_answer(answer)
        adapter.end_case()
    except AdapterError as error:
        found.append(f"the implementation failed to answer: {error}")
    return found


def _result_problems(answer: Any, op: str) -> list[str]:
    return [f"answer to {op!r} {problem}" for problem in protocol.problems(answer, "result")]


def _smoke_wire(command_line: str, directory: Path, timeout: float) -> list[str]:
    try:
        command = shlex.split(command_line)
    except ValueError as error:
        return [f"the command line is not valid: {error}"]
    if not command:
        return ["no command after 'cmd:'"]
    try:
        process = HarnessProcess(command)
    except AdapterError as error:
        return [str(error)]
    try:
        return _WireSmoke(process, timeout).run(directory)
    finally:
        process.kill()


class _WireSmoke:
    """The smoke checks, message by message, on a running protocol executable."""

    def __init__(self, process: HarnessProcess, timeout: float) -> None:
        self.process = process
        self.timeout = timeout
        self.found: list[str] = []

    def run(self, directory: Path) -> list[str]:
        try:
            info = self._handshake()
            if info is None:
                return self.found
            self._expect_ok(protocol.begin_case_request(directory))
            seq = 1
            if "probe" in info.get("capabilities", []):
                args = _probe_request_args(directory)
                answer = self._operation(seq, "probe", args)
                if answer is not None:
                    self.found += check_probe_answer(answer, args["path"])
                seq += 1
            answer = self._operation(seq, UNKNOWN_OPERATION, {})
            if answer is not None:
                self.found += check_unsupported_answer(answer)
            self._expect_ok(protocol.end_case_request())
            self._shutdown()
        except AdapterError as error:
            self.found.append(str(error))
        return self.found

    def _handshake(self) -> dict[str, Any] | None:
        reply = self.process.exchange(protocol.start_request(), self.timeout)
        problems = protocol.problems(reply, "startReply")
        if problems and not isinstance(reply.get("implementation"), dict):
            self.found += [f"handshake reply {problem}" for problem in problems]
            return None
        if reply.get("version") != protocol.PROTOCOL_VERSION:
            self.found.append(f"handshake: version {reply.get('version')!r}, expected 1")
        self.found += check_info(reply["implementation"])
        implementation: dict[str, Any] = reply["implementation"]
        return implementation

    def _expect_ok(self, request: dict[str, Any]) -> None:
        reply = self.process.exchange(request, self.timeout)
        problems = protocol.problems(reply, "okReply")
        if problems:
            self.found += [f"reply to {request['cmd']!r} {problem}" for problem in problems]
        elif not reply["ok"]:
            self.found.append(f"{request['cmd']!r} refused: {reply['error']}")

    def _operation(self, seq: int, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        reply: dict[str, Any] = self.process.exchange({"cmd": op, "seq": seq, **args}, self.timeout)
        if reply.get("seq") != seq:
            self.found.append(f"answer to {op!r} carries seq {reply.get('seq')!r}, expected {seq}")
        problems = protocol.problems(reply, "answer")
        self.found += [f"answer to {op!r} {problem}" for problem in problems]
        return reply

    def _shutdown(self) -> None:
        self.process.send(protocol.shutdown_request())
        stdin = self.process.process.stdin
        if stdin is not None:
            stdin.close()
        try:
            status = self.process.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.found.append(
                f"'shutdown': the implementation did not exit within {self.timeout:g} s"
            )
            return
        if status != 0:
            self.found.append(f"'shutdown': the implementation exited with status {status}")
        leftover = self.process.unexpected_output()
        if leftover:
            self.found.append(f"'shutdown' needs no reply, but one came: {leftover[:200]!r}")
