"""Any executable that speaks the JSON-lines protocol (conformance/PROTOCOL.md) as an adapter.

The executable runs for many cases. A reply that does not come within the
timeout, a reply that breaks the protocol, or an exit while the suite waits
is an AdapterError for the step at hand; the process is then stopped (its
whole process group), and the next case starts a fresh one with the
handshake replayed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from conformance import protocol
from conformance.adapters.base import AdapterError, ImplementationInfo

DEFAULT_TIMEOUT = 60.0
SHUTDOWN_GRACE = 5.0
"""How long a process may take to exit after ``shutdown`` before it is killed."""
MAX_FAILED_STARTS = 3
"""Consecutive failed starts after which the adapter stops restarting the implementation."""
STDERR_TAIL_BYTES = 4000


class HarnessProcess:
    """One run of a protocol executable: messages in, lines out, with its stderr's tail kept."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        try:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            raise AdapterError(f"cannot run {self.command[0]!r}: {error.strerror}") from None
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._stderr_lock = threading.Lock()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_lines, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _read_lines(self, stream: IO[bytes]) -> None:
        """Queues each stdout line, then None at the end; the stream is this thread's to close."""
        with stream, contextlib.suppress(OSError, ValueError):
            for line in stream:
                self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self, stream: IO[bytes]) -> None:
        """Keeps the last few kilobytes of stderr; the stream is this thread's to close."""
        with stream, contextlib.suppress(OSError, ValueError):
            while chunk := os.read(stream.fileno(), 4096):
                with self._stderr_lock:
                    self._stderr.append(chunk)
                    self._stderr_size += len(chunk)
                    while self._stderr_size > STDERR_TAIL_BYTES and len(self._stderr) > 1:
                        self._stderr_size -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        """The last few kilobytes the process wrote to stderr."""
        with self._stderr_lock:
            text = b"".join(self._stderr)[-STDERR_TAIL_BYTES:]
        return text.decode("utf-8", "replace").strip()

    def send(self, message: dict[str, Any]) -> None:
        """Writes one request line; AdapterError when the process no longer reads."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(protocol.encode(message))
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._wait_briefly()
            raise AdapterError(self._gone("before reading", message)) from None

    def receive(self, timeout: float, request: dict[str, Any]) -> dict[str, Any]:
        """The next reply line as an object; AdapterError on a timeout, an exit or garbage."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AdapterError(
                f"no reply to {describe(request)} within {timeout:g} s" + self._with_stderr()
            ) from None
        if line is None:
            self._wait_briefly()
            raise AdapterError(self._gone("while answering", request))
        try:
            return protocol.decode(line)
        except protocol.ProtocolError as error:
            raise AdapterError(f"reply to {describe(request)} is {error}") from None

    def unexpected_output(self) -> bytes | None:
        """A line the process wrote without being asked, if any is waiting."""
        try:
            line = self._lines.get_nowait()
        except queue.Empty:
            return None
        if line is None:
            self._lines.put(None)
        return line

    def exchange(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(request)
        return self.receive(timeout, request)

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Asks the process to exit; kills it when it does not within ``grace``."""
        if self.alive:
            try:
                self.send(protocol.shutdown_request())
                stdin = self.process.stdin
                if stdin is not None:
                    stdin.close()
                self.process.wait(timeout=grace)
            except (AdapterError, subprocess.TimeoutExpired, OSError):
                pass
        self.kill()

    def kill(self) -> None:
        """Stops the process and whatever it started in its session."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if self.alive:
                self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        for thread in self._threads:
            thread.join(timeout=1.0)

    def _wait_briefly(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1.0)
        for thread in self._threads:
            thread.join(timeout=1.0)

    def _gone(self, when: str, request: dict[str, Any]) -> str:
        status = self.process.poll()
        if status is None:
            how = "closed its stdout"
        elif status < 0:
            how = f"was killed by signal {-status}"
        else:
            how = f"exited with status {status}"
        return f"the implementation {how} {when} {describe(request)}" + self._with_stderr()

    def _with_stderr(self) -> str:
        tail = self.stderr_tail()
        return f"; its stderr ends with:\n{tail}" if tail else "; it wrote nothing to stderr"


def describe(request: dict[str, Any]) -> str:
    """A request as an error message names it."""
    if protocol.is_operation(request):
        return f"'{request.get('cmd')}' (seq {request.get('seq')})"
    return f"'{request.get('cmd')}'"


class CmdAdapter:
    """An implementation in another process, spoken to over stdin/stdout in JSON lines."""

    def __init__(self, command: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        if not command:
            raise AdapterError("no command to run")
        if timeout <= 0:
            raise AdapterError(f"the timeout must be positive, not {timeout:g}")
        self.command = list(command)
        self.timeout = timeout
        self._process: HarnessProcess | None = None
        self._seq = 0
        self._failed_starts = 0
        self._in_case = False
        self._info = self._start()

    @property
    def info(self) -> ImplementationInfo:
        return self._info

    @property
    def process(self) -> HarnessProcess | None:
        """The running process (None after a failure, until the next case starts one)."""
        return self._process

    def begin_case(self, directory: Path) -> None:
        if self._process is None:
            restarted = self._start()
            if restarted != self._info:
                self._abandon()
                raise AdapterError(
                    "the restarted implementation describes itself differently: "
                    f"{restarted.to_json()} instead of {self._info.to_json()}"
                )
        self._in_case = True
        self._expect_ok(protocol.begin_case_request(directory))

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._process is None:
            raise AdapterError(
                "the implementation stopped earlier in this case; a fresh one starts with "
                "the next case"
            )
        self._seq += 1
        seq = self._seq
        try:
            request = protocol.operation_request(seq, op, args)
            protocol.check_request(request)
        except protocol.ProtocolError as error:
            raise AdapterError(f"the suite cannot send {op!r}: {error}") from None
        reply = self._exchange(request)
        if reply.get("seq") != seq:
            self._abandon()
            raise AdapterError(f"reply to {describe(request)} carries seq {reply.get('seq')!r}")
        try:
            protocol.check(reply, "answer")
        except protocol.ProtocolError as error:
            self._abandon()
            raise AdapterError(f"reply to {describe(request)} is {error}") from None
        return {key: value for key, value in reply.items() if key != "seq"}

    def end_case(self) -> None:
        """Ends the case; after a failure there is no process left to tell."""
        if not self._in_case:
            return
        self._in_case = False
        if self._process is not None:
            self._expect_ok(protocol.end_case_request())

    def close(self) -> None:
        if self._process is not None:
            self._process.shutdown(min(SHUTDOWN_GRACE, self.timeout))
            self._process = None

    def _start(self) -> ImplementationInfo:
        """Starts the process and does the handshake (again, after a failure)."""
        if self._failed_starts >= MAX_FAILED_STARTS:
            raise AdapterError(
                f"gave up: the implementation failed to start {self._failed_starts} times "
                f"in a row ({' '.join(self.command)})"
            )
        try:
            self._process = HarnessProcess(self.command)
            reply = self._exchange(protocol.start_request())
            try:
                info = protocol.info_from_start_reply(reply)
            except protocol.ProtocolError as error:
                if isinstance(reply.get("version"), int) and reply["version"] != 1:
                    detail = f"it speaks protocol version {reply['version']}, the suite 1"
                else:
                    detail = f"the reply is {error}"
                raise AdapterError(f"handshake failed: {detail}") from None
        except AdapterError:
            self._failed_starts += 1
            self._abandon()
            raise
        self._failed_starts = 0
        return info

    def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        process = self._process
        assert process is not None
        stray = process.unexpected_output()
        try:
            if stray is not None:
                raise AdapterError(
                    f"the implementation wrote a line nobody asked for: {stray[:200]!r}"
                )
            return process.exchange(request, self.timeout)
        except AdapterError:
            self._abandon()
            raise

    def _expect_ok(self, request: dict[str, Any]) -> None:
        reply = self._exchange(request)
        try:
            protocol.check(reply, "okReply")
        except protocol.ProtocolError as error:
            self._abandon()
            raise AdapterError(f"reply to {describe(request)} is {error}") from None
        if not reply["ok"]:
            refusal = reply["error"]
            raise AdapterError(
                f"{describe(request)} refused: {refusal['code']}: {refusal['message']}"
            )

    def _abandon(self) -> None:
        """Stops the process; the next case starts a fresh one."""
        if self._process is not None:
            self._process.kill()
            self._process = None
