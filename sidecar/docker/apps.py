"""Apps (compose projects) of a Docker host: their containers, volumes and policy.

The `Registry` is fed by a full inventory (at start and after every reconnect
of the events stream) and by single container events in between. An app's id
is the compose project (`com.docker.compose.project`, the Websoft9 app id),
else the container's name; its policy is parsed from the labels of all its
containers (`sidecar.labels`) and kept with its errors: an app whose labels
are wrong stays visible, with the errors, and is not backed up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from sidecar.errors import AppNotFound, AppPolicyInvalid
from sidecar.labels import AppPolicy, parse_labels

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
VOLUME_KEY_LABEL = "com.docker.compose.volume"
APP_NAME_ENV = "W9_APP_NAME"


@dataclass(frozen=True)
class Mount:
    kind: str  # volume, bind, tmpfs
    destination: str
    source: str  # host path
    rw: bool
    volume: str | None = None  # the volume's name when kind == "volume"


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    app_id: str
    labels: Mapping[str, str]
    running: bool
    status: str
    mounts: tuple[Mount, ...] = ()
    service: str | None = None
    app_name: str | None = None  # W9_APP_NAME from its environment

    @classmethod
    def from_inspect(cls, attrs: Mapping[str, Any]) -> ContainerInfo:
        config = attrs.get("Config") or {}
        labels = dict(config.get("Labels") or {})
        name = (attrs.get("Name") or "").lstrip("/") or attrs["Id"][:12]
        state = attrs.get("State") or {}
        mounts = tuple(
            Mount(
                kind=m.get("Type", ""),
                destination=m.get("Destination", ""),
                source=m.get("Source", ""),
                rw=bool(m.get("RW", True)),
                volume=m.get("Name") if m.get("Type") == "volume" else None,
            )
            for m in attrs.get("Mounts") or ()
        )
        app_name = None
        for item in config.get("Env") or ():
            key, _, value = item.partition("=")
            if key == APP_NAME_ENV and value:
                app_name = value
        return cls(
            id=attrs["Id"],
            name=name,
            app_id=labels.get(PROJECT_LABEL) or name,
            labels=labels,
            running=bool(state.get("Running")),
            status=state.get("Status", ""),
            mounts=mounts,
            service=labels.get(SERVICE_LABEL),
            app_name=app_name,
        )

    def to_dict(self) -> dict:
        return {
            "id": self.id[:12],
            "name": self.name,
            "service": self.service,
            "running": self.running,
            "status": self.status,
            "volumes": [m.volume for m in self.mounts if m.volume],
        }


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    driver: str
    mountpoint: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The compose key of the volume (`data` for `myapp_data`), else its name."""
        return self.labels.get(VOLUME_KEY_LABEL) or self.name

    @classmethod
    def from_inspect(cls, attrs: Mapping[str, Any]) -> VolumeInfo:
        return cls(
            name=attrs["Name"],
            driver=attrs.get("Driver") or "local",
            mountpoint=attrs.get("Mountpoint") or "",
            labels=dict(attrs.get("Labels") or {}),
        )


@dataclass(frozen=True)
class App:
    app_id: str
    app_name: str
    containers: tuple[ContainerInfo, ...]
    volumes: tuple[VolumeInfo, ...]
    policy: AppPolicy

    def container(self, name: str) -> ContainerInfo | None:
        return next((c for c in self.containers if c.name == name), None)

    def mounts_of(self, volume: str) -> list[tuple[ContainerInfo, Mount]]:
        """The containers mounting `volume`, read-write mounts first."""
        found = [(c, m) for c in self.containers for m in c.mounts if m.volume == volume]
        return sorted(found, key=lambda cm: (not cm[1].rw, not cm[0].running, cm[0].name))

    def db_volume_names(self) -> set[str]:
        db = self.policy.db_containers()
        return {m.volume for c in self.containers if c.name in db for m in c.mounts if m.volume}

    def backup_volumes(self) -> list[VolumeInfo]:
        """The volumes a backup reads: the label's list, else every named volume except
        the data volumes of database containers (their dump is their backup)."""
        wanted = self.policy.volumes
        if wanted is None:
            skip = self.db_volume_names()
            return [v for v in self.volumes if v.name not in skip]
        chosen: list[VolumeInfo] = []
        missing = []
        for item in wanted:
            match = next((v for v in self.volumes if item in (v.name, v.key)), None)
            if match is None:
                missing.append(item)
            elif match not in chosen:
                chosen.append(match)
        if missing:
            known = ", ".join(sorted(v.key for v in self.volumes)) or "none"
            raise AppPolicyInvalid(
                f"app {self.app_id}: websoft9.backup.volumes names {', '.join(missing)}, "
                f"which the app's containers do not mount (its volumes: {known})"
            )
        return chosen

    def to_dict(self) -> dict:
        return {
            "app_id": self.app_id,
            "app_name": self.app_name,
            "containers": [c.to_dict() for c in self.containers],
            "volumes": [{"name": v.name, "key": v.key, "driver": v.driver} for v in self.volumes],
            "policy": self.policy.to_dict(),
            "errors": [e.to_dict() for e in self.policy.errors],
        }


def build_app(app_id: str, containers: Iterable[ContainerInfo], volumes: Mapping[str, VolumeInfo]) -> App:
    members = tuple(sorted(containers, key=lambda c: c.name))
    policy = parse_labels({c.name: c.labels for c in members})
    names = sorted({m.volume for c in members for m in c.mounts if m.volume})
    vols = tuple(volumes.get(n) or VolumeInfo(n, "local", "") for n in names)
    app_name = next((c.app_name for c in members if c.app_name), None) or app_id
    return App(app_id, app_name, members, vols, policy)


class Registry:
    """The apps of the host as last seen; safe to read from any thread."""

    def __init__(self, log_changes: bool = True) -> None:
        self.log_changes = log_changes  # the daemon logs discoveries and label errors; a one-shot CLI does not
        self._lock = threading.Condition()
        self._containers: dict[str, ContainerInfo] = {}
        self._volumes: dict[str, VolumeInfo] = {}
        self._apps: dict[str, App] = {}
        self.generation = 0  # bumped on every change
        self.listeners: list[Callable[[str, App | None], None]] = []

    # ---- reading ---------------------------------------------------------------------

    def apps(self) -> list[App]:
        with self._lock:
            return sorted(self._apps.values(), key=lambda a: a.app_id)

    def get(self, app_id: str) -> App | None:
        with self._lock:
            return self._apps.get(app_id)

    def require(self, app_id: str) -> App:
        app = self.get(app_id)
        if app is None:
            raise AppNotFound(f"no app {app_id!r} on this Docker host (no container with that compose project or name)")
        return app

    def wait_for(self, predicate: Callable[[Registry], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked after every change)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    # ---- feeding ---------------------------------------------------------------------

    def inventory(self, client: docker.DockerClient) -> None:
        """Replace everything with what the engine has now."""
        api = client.api
        volumes = {v["Name"]: VolumeInfo.from_inspect(v) for v in (api.volumes().get("Volumes") or ())}
        summaries = api.containers(all=True)
        with self._lock:
            known = dict(self._containers)
        containers: dict[str, ContainerInfo] = {}
        for summary in summaries:
            cid = summary["Id"]
            info = known.get(cid)
            if info is None or info.status != summary.get("State"):
                try:
                    info = ContainerInfo.from_inspect(api.inspect_container(cid))
                except docker.errors.NotFound:
                    continue  # removed between the list and the inspect
            containers[cid] = info
        with self._lock:
            self._containers = containers
            self._volumes = volumes
            self._recompute(set(self._apps) | {c.app_id for c in containers.values()})

    def handle_event(self, client: docker.DockerClient, event: Mapping[str, Any]) -> None:
        """Bring one container up to date after an event about it."""
        cid = event.get("id") or (event.get("Actor") or {}).get("ID")
        if not cid:
            return
        action = (event.get("Action") or event.get("status") or "").split(":", 1)[0]
        info: ContainerInfo | None = None
        if action != "destroy":
            try:
                info = ContainerInfo.from_inspect(client.api.inspect_container(cid))
            except docker.errors.NotFound:
                info = None
        new_volumes: dict[str, VolumeInfo] = {}
        if info is not None:
            for m in info.mounts:
                if m.volume and m.volume not in self._volumes:
                    with contextlib.suppress(docker.errors.NotFound):
                        new_volumes[m.volume] = VolumeInfo.from_inspect(client.api.inspect_volume(m.volume))
        with self._lock:
            old = self._containers.pop(cid, None)
            if info is not None:
                self._containers[cid] = info
            self._volumes.update(new_volumes)
            touched = {c.app_id for c in (old, info) if c is not None}
            self._recompute(touched)

    def _recompute(self, app_ids: set[str]) -> None:
        by_app: dict[str, list[ContainerInfo]] = {}
        for c in self._containers.values():
            if c.app_id in app_ids:
                by_app.setdefault(c.app_id, []).append(c)
        changed = False
        for app_id in app_ids:
            members = by_app.get(app_id)
            old = self._apps.get(app_id)
            if not members:
                if old is not None:
                    del self._apps[app_id]
                    if self.log_changes:
                        log.info("app %s: gone (no containers left)", app_id)
                    self._notify(app_id, None)
                    changed = True
                continue
            app = build_app(app_id, members, self._volumes)
            if app == old:
                continue
            self._apps[app_id] = app
            changed = True
            if self.log_changes and (old is None or old.policy != app.policy):
                self._log_policy(app, old)
            self._notify(app_id, app)
        if changed:
            self.generation += 1
            self._lock.notify_all()

    @staticmethod
    def _log_policy(app: App, old: App | None) -> None:
        if app.policy.errors:
            for error in app.policy.errors:
                log.warning("app %s: label error, not backed up until fixed: %s", app.app_id, error)
        elif app.policy.enabled:
            what = "discovered" if old is None else "policy changed"
            log.info(
                "app %s: %s (schedule %s, type %s)",
                app.app_id,
                what,
                app.policy.schedule or "manual",
                app.policy.backup_type,
            )

    def _notify(self, app_id: str, app: App | None) -> None:
        for listener in self.listeners:
            try:
                listener(app_id, app)
            except Exception:
                log.exception("registry listener failed for app %s", app_id)
