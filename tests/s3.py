"""A real S3-protocol server for the tests: moto's standalone server on 127.0.0.1
(PyPI `moto[server]`), one per session; each test gets buckets of its own.
Under CI=true a missing server fails the tests that need it; elsewhere they skip.

`FaultyProxy` sits in front of it and, for a share of the requests, answers 503
SlowDown or 500, resets the connection (before forwarding, or after the server
has handled the request) or flips a byte of a PUT body (moto checks no
Content-MD5: the client's ETag check must catch it), and counts the requests
it sees."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() == "true"
S3_ENV = {"AWS_ACCESS_KEY_ID": "w9test", "AWS_SECRET_ACCESS_KEY": "w9test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def _unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"S3 tests need moto's server under CI=true: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_command() -> list[str] | None:
    exe = Path(sys.executable).parent / "moto_server"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("moto_server")
    return [found] if found else None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto server on 127.0.0.1."""
    command = _moto_command()
    if command is None:
        _unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _unavailable(f"moto_server did not start: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Credentials and endpoint in this process's environment (run_cli passes them on)."""
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_server}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def new_bucket_url(prefix: str = "repo") -> str:
    return f"s3://w9-{secrets.token_hex(6)}/{prefix}"


# ---- fault injection -----------------------------------------------------------------------------


def _read_head(sock: socket.socket, buffer: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            raise AssertionError("chunked bodies are not expected here")
    return 0


def _read_body(sock: socket.socket, buffer: bytearray, length: int) -> bytes | None:
    while len(buffer) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return None
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return body


def _reset(sock: socket.socket) -> None:
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


_ERROR = (
    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {length}\r\n"
    "Connection: close\r\n\r\n{body}"
)


class FaultyProxy:
    """HTTP/1.1 proxy to `upstream` (host, port) that fails a share `rate` of requests."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.1,
        seed: int = 1,
        faults: tuple[str, ...] = ("503", "500", "reset-before", "reset-after", "corrupt"),
    ) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.rate = rate
        self.kinds = faults
        self.block_after_data_puts: int | None = None  # then answer everything 503 (a dying link)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # "METHOD first-path-part" -> count
        self.faults: Counter[str] = Counter()
        self.log: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._server.close()

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.log.clear()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _choose(self, method: bytes, body: bytes) -> str | None:
        with self.lock:
            if self.random.random() >= self.rate:
                return None
            kinds = [k for k in self.kinds if k != "corrupt" or (method == b"PUT" and body)]
            return self.random.choice(kinds) if kinds else None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        cbuf, ubuf = bytearray(), bytearray()
        try:
            while True:
                head = _read_head(client, cbuf)
                if head is None:
                    return
                lines = head.split(b"\r\n")
                expect = [line for line in lines if line.lower().startswith(b"expect:")]
                if expect:  # answer it here; the server gets the whole request at once
                    head = b"\r\n".join(line for line in lines if line not in expect)
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _read_body(client, cbuf, _content_length(head))
                if body is None:
                    return
                method, target = head.split(b" ", 2)[:2]
                what = f"{method.decode()} {target.decode()}"
                with self.lock:
                    self.requests[method.decode()] += 1
                    self.log.append(what)
                fault = self._choose(method, body)
                with self.lock:
                    limit = self.block_after_data_puts
                    if limit is not None and method == b"PUT" and b"/data/" in target:
                        if self.requests["PUT data"] >= limit:
                            fault = "503"
                        else:
                            self.requests["PUT data"] += 1
                if fault is not None:
                    with self.lock:
                        self.faults[fault] += 1
                if fault in ("503", "500"):
                    code, reason = ("SlowDown", "Slow Down") if fault == "503" else ("InternalError", "Internal Error")
                    xml = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
                    client.sendall(_ERROR.format(status=fault, reason=reason, length=len(xml), body=xml).encode())
                    return
                if fault == "reset-before":
                    _reset(client)
                    return
                if fault == "corrupt":  # one byte flipped on the way; the length stays
                    at = self.random.randrange(len(body))
                    body = body[:at] + bytes([body[at] ^ 0x40]) + body[at + 1 :]
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                upstream.sendall(head + body)
                rhead = _read_head(upstream, ubuf)
                if rhead is None:
                    return
                length = 0 if method == b"HEAD" else _content_length(rhead)
                rbody = _read_body(upstream, ubuf, length)
                if rbody is None:
                    return
                if fault == "reset-after":  # the server did it; the client never hears
                    _reset(client)
                    return
                client.sendall(rhead + rbody)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
