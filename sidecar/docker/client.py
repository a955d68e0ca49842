"""The connection to the Docker engine and its events stream.

`connect()` reaches the engine named by `DOCKER_HOST` (or the local socket)
and fails with one clear line when it cannot. `EventWatcher` follows the
`type=container` events in a thread: when the stream breaks (the engine
restarts, the socket goes away) it reconnects with back-off, runs a full
inventory first so that nothing that happened while it was away is missed,
and resumes the stream with `since=` the last event it saw.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import requests.exceptions

from sidecar.errors import DockerUnavailable

log = logging.getLogger(__name__)

CONTAINER_ACTIONS = frozenset({"create", "start", "restart", "die", "stop", "kill", "destroy", "rename", "update"})
API_TIMEOUT = 60.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0

# What a broken connection to the engine looks like, whichever layer notices first.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    ConnectionError,
    OSError,
)


def engine_address(base_url: str | None = None) -> str:
    return base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(base_url: str | None = None, timeout: float = API_TIMEOUT) -> docker.DockerClient:
    """A client for the engine at `base_url` (default: `DOCKER_HOST`, else the socket), checked with a ping."""
    address = engine_address(base_url)
    try:
        client = docker.DockerClient(base_url=address, timeout=int(timeout), version="auto")
        client.ping()
    except CONNECTION_ERRORS as exc:
        raise DockerUnavailable(f"cannot reach the Docker engine at {address}: {_reason(exc)}") from None
    return client


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # requests wraps the socket error several times; the innermost words are the useful ones
    for marker in ("Connection refused", "No such file or directory", "Permission denied", "timed out"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200]


def event_time(event: dict[str, Any]) -> int:
    """The event's time in nanoseconds since the epoch."""
    if event.get("timeNano"):
        return int(event["timeNano"])
    return int(event.get("time", 0)) * 1_000_000_000


def since_param(time_ns: int) -> str:
    return f"{time_ns // 1_000_000_000}.{time_ns % 1_000_000_000:09d}"


class EventWatcher:
    """Follows container events; calls `on_inventory(client)` after every (re)connect and
    `on_event(client, event)` for each container event, from one thread, in order."""

    def __init__(
        self,
        on_inventory: Callable[[docker.DockerClient], None],
        on_event: Callable[[docker.DockerClient, dict[str, Any]], None],
        base_url: str | None = None,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.on_inventory = on_inventory
        self.on_event = on_event
        self.base_url = base_url
        self.backoff_max = backoff_max
        self.last_event_ns: int | None = None
        self.connected = threading.Event()
        self.reconnects = 0
        self._stop = threading.Event()
        self._stream: Any = None
        self._client: docker.DockerClient | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        first = True
        while not self._stop.is_set():
            try:
                self._session()
                delay = BACKOFF_FIRST  # the stream ended cleanly (engine shutting down): reconnect soon
            except DockerUnavailable as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
            except CONNECTION_ERRORS as exc:
                if not self._stop.is_set():
                    log.warning("lost the Docker events stream (%s); reconnecting in %.1f s", _reason(exc), delay)
            except Exception:
                log.exception("error while following Docker events; reconnecting in %.1f s", delay)
            finally:
                self.connected.clear()
                self._close()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff_max)
            if first:
                first = False
            self.reconnects += 1

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _session(self) -> None:
        client = connect(self.base_url)
        self._client = client
        # Subscribe before the inventory: whatever happens while the inventory runs is in the stream.
        since = self.last_event_ns
        if since is None:
            since = time.time_ns()
        self._stream = client.api.events(since=since_param(since), filters={"type": "container"}, decode=True)
        self.on_inventory(client)
        self.connected.set()
        log.info("following Docker events at %s", engine_address(self.base_url))
        for event in self._stream:
            if self._stop.is_set():
                return
            if event.get("Type") != "container":
                continue
            self.last_event_ns = max(self.last_event_ns or 0, event_time(event))
            action = (event.get("Action") or event.get("status") or "").split(":", 1)[0]
            if action not in CONTAINER_ACTIONS:
                continue
            try:
                self.on_event(client, event)
            except CONNECTION_ERRORS:
                raise
            except Exception:
                log.exception("error handling Docker event %s for %s", action, (event.get("id") or "")[:12])
