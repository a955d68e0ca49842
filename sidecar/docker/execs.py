"""Commands run inside containers with `docker exec`: output, exit code, timeout.

A command runs in its own session (`setsid`) so that a timeout kills it with
everything it started, not only the shell. Values that may be secret travel
in the exec's environment, never in its arguments.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import docker
import docker.errors

from sidecar.docker.streams import prefetched

log = logging.getLogger(__name__)

OUTPUT_KEEP = 4096  # bytes of output kept (the end of it) for logs and errors

# `sh -c` wrapper: prints a marker with the command's pid, runs it as a session leader
# when setsid exists, and exits with its status. The command itself comes from $W9_EXEC_COMMAND.
_WRAPPER = (
    'if command -v setsid >/dev/null 2>&1; then setsid sh -c "$W9_EXEC_COMMAND" & '
    'else sh -c "$W9_EXEC_COMMAND" & fi; '
    'echo "$W9_EXEC_MARKER$!"; wait $!'
)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None when it was killed after its timeout
    output: str  # stdout and stderr, the last OUTPUT_KEEP bytes, decoded
    timed_out: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _tail(data: bytes) -> str:
    text = data[-OUTPUT_KEEP:].decode("utf-8", "replace").strip()
    return ("..." + text) if len(data) > OUTPUT_KEEP else text


def _start_exec(
    api: docker.APIClient,
    container: str,
    argv: list[str],
    env: Mapping[str, str],
    user: str | None,
    stdin: bool = False,
) -> tuple[str, object, socket.socket]:
    """Create and start an exec; returns (exec id, docker-py's socket wrapper, the raw socket)."""
    exec_id = api.exec_create(
        container,
        list(argv),
        stdin=stdin,
        stdout=True,
        stderr=True,
        user=user or "",
        environment=[f"{k}={v}" for k, v in env.items()],
    )["Id"]
    sock = api.exec_start(exec_id, socket=True)
    return exec_id, sock, getattr(sock, "_sock", sock)


class _OutputTail:
    """Collects an exec's output (both streams) in a thread, keeping about its last 4 x OUTPUT_KEEP bytes."""

    def __init__(self, raw: socket.socket, finished: Callable[[], bool] | None) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._kept = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(raw, finished), name="exec-output", daemon=True)
        self._thread.start()

    def _pump(self, raw: socket.socket, finished: Callable[[], bool] | None) -> None:
        try:
            for _stream, data in _frames(raw, finished):
                self._chunks.append(data)
                self._kept += len(data)
                while self._kept > 4 * OUTPUT_KEEP and len(self._chunks) > 1:
                    self._kept -= len(self._chunks.popleft())
        except OSError:
            pass
        finally:
            self.done.set()

    def data(self) -> bytes:
        return b"".join(self._chunks)


def run_shell(
    client: docker.DockerClient,
    container: str,
    command: str,
    *,
    user: str | None = None,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> ExecResult:
    """Run `sh -c command` in `container`; a run past `timeout` is killed (with its children)."""
    api = client.api
    marker = f"w9pid-{secrets.token_hex(8)}:"
    environment = {**(env or {}), "W9_EXEC_COMMAND": command, "W9_EXEC_MARKER": marker}
    t0 = time.monotonic()
    exec_id, sock, raw = _start_exec(api, container, ["sh", "-c", _WRAPPER], environment, user)
    collected = _OutputTail(raw, lambda: _gone(api, exec_id))
    done = collected.done
    timed_out = not done.wait(timeout)
    output = collected.data()
    pid_match = re.search(re.escape(marker.encode()) + rb"(\d+)\n?", output)
    if timed_out:
        if pid_match:
            _kill(client, container, int(pid_match.group(1)))
        if not done.wait(5):  # the command's children may hold the output open: stop reading
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
            done.wait(5)
        output = collected.data()
    with contextlib.suppress(OSError):
        sock.close()
    output = re.sub(re.escape(marker.encode()) + rb"\d+\n?", b"", output)
    exit_code: int | None = None
    if not timed_out:
        exit_code = _exit_code(api, exec_id)
    return ExecResult(exit_code, _tail(output), timed_out, time.monotonic() - t0)


def _gone(api: docker.APIClient, exec_id: str) -> bool:
    try:
        return not api.exec_inspect(exec_id).get("Running")
    except docker.errors.APIError:
        return True


def _exit_code(api: docker.APIClient, exec_id: str) -> int | None:
    # The output stream can end a moment before the engine records the exit code.
    for _ in range(50):
        info = api.exec_inspect(exec_id)
        if not info.get("Running"):
            return info.get("ExitCode")
        time.sleep(0.05)
    return api.exec_inspect(exec_id).get("ExitCode")


def _kill(client: docker.DockerClient, container: str, pid: int) -> None:
    """Kill the command's process group (its session), else the process itself."""
    try:
        exec_id = client.api.exec_create(
            container, ["sh", "-c", 'kill -s KILL -- "-$0" 2>/dev/null || kill -s KILL "$0"', str(pid)], user="0"
        )["Id"]
        client.api.exec_start(exec_id)
    except docker.errors.APIError as exc:
        log.warning("could not kill pid %d in %s after its timeout: %s", pid, container, exc)


def _frames(sock, finished: Callable[[], bool] | None = None) -> Iterator[tuple[int, bytes]]:
    """Demultiplex Docker's exec stream: 8-byte headers (stream, 0, 0, 0, size32) + payload.

    With `finished` (is the exec's process gone?), a quiet stream is checked every
    second: the engine sometimes keeps an exec's stream open after its process
    exited (seen with Docker 20.10 and commands that end within milliseconds), and a
    read would then wait forever. Two quiet seconds after the process is gone = the end."""
    if finished is not None:
        sock.settimeout(1.0)
    quiet = 0

    def recv(n: int) -> bytes | None:
        nonlocal quiet
        while True:
            try:
                data = sock.recv(n)
                quiet = 0
                return data
            except TimeoutError:
                if finished is None:
                    raise
                quiet = quiet + 1 if finished() else 0
                if quiet >= 2:
                    return None

    buf = b""
    while True:
        while len(buf) < 8:
            data = recv(65536)
            if not data:
                return
            buf += data
        stream = buf[0]
        size = int.from_bytes(buf[4:8], "big")
        buf = buf[8:]
        while len(buf) < size:
            data = recv(max(65536, size - len(buf)))
            if not data:
                yield stream, buf
                return
            buf += data
        yield stream, buf[:size]
        buf = buf[size:]


# ---- streams: a dump out of a container, a dump into one --------------------------------------

STDERR_KEEP = 8192
TAIL_KEEP = 256


class ExecStream(io.RawIOBase):
    """The standard output of a command in a container as a readable binary file.
    Standard error is kept (its last 8 KiB) for the error message; the last bytes of
    the output are kept to check a dump's trailer; `finish()` gives the exit code."""

    def __init__(
        self,
        client: docker.DockerClient,
        container: str,
        argv: list[str],
        env: Mapping[str, str],
        user: str | None = None,
    ) -> None:
        self._api = client.api
        self.exec_id, self._sock, self._raw = _start_exec(self._api, container, argv, env, user)
        self._blocks = prefetched(self._stdout())
        self._left = memoryview(b"")
        self.stderr = bytearray()
        self.tail = b""
        self.size = 0
        self.eof = False

    def readable(self) -> bool:
        return True

    def _stdout(self) -> Iterator[bytes]:
        """The output frames (in the read-ahead thread); standard error is set aside."""
        for stream, data in _frames(self._raw, lambda: _gone(self._api, self.exec_id)):
            if stream == 2:
                self.stderr += data
                if len(self.stderr) > 2 * STDERR_KEEP:
                    del self.stderr[:-STDERR_KEEP]
            else:
                yield data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._left:
            if self.eof:
                return 0
            block = next(self._blocks, None)
            if block is None:
                self.eof = True
                return 0
            self._left = memoryview(block)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        if n >= TAIL_KEEP:
            self.tail = bytes(self._left[n - TAIL_KEEP : n])
        else:
            self.tail = (self.tail + bytes(self._left[:n]))[-TAIL_KEEP:]
        self._left = self._left[n:]
        self.size += n
        return n

    def finish(self) -> int | None:
        """Read to the end (discarding) and return the exit code."""
        while self.readinto(bytearray(65536)):
            pass
        with contextlib.suppress(OSError):
            self._sock.close()
        return _exit_code(self._api, self.exec_id)

    def error_text(self) -> str:
        return _tail(bytes(self.stderr[-STDERR_KEEP:]))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        super().close()


def run_with_stdin(
    client: docker.DockerClient,
    container: str,
    argv: list[str],
    source: BinaryIO,
    *,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    block: int = 1 << 20,
) -> ExecResult:
    """Run `argv` in `container` with `source` streamed into its standard input
    (half-closed at the end); output (stdout and stderr) is kept, trimmed."""
    api = client.api
    t0 = time.monotonic()
    exec_id, sock, raw = _start_exec(api, container, argv, env or {}, user, stdin=True)
    # no stall check on this socket: its timeout would make it non-blocking under the writer
    collected = _OutputTail(raw, None)
    try:
        while data := source.read(block):
            raw.sendall(data)
    except OSError as exc:  # the command stopped reading (it failed): its output says why
        log.debug("stdin of %s closed early: %s", argv[0], exc)
    finally:
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
    collected.done.wait()
    with contextlib.suppress(OSError):
        sock.close()
    return ExecResult(_exit_code(api, exec_id), _tail(collected.data()), False, time.monotonic() - t0)
