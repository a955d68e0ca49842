"""Restore an app to a snapshot (DESIGN.md §4), with a safety snapshot and a rollback.

lock app → verify the snapshot (every blob indexed, its packs present with
sound headers; with `verify_data` every pack read and checked) → safety
snapshot of the current state (tag `pre-restore`) → `restore.pre` hooks →
stop the app's containers except its databases → load the dumps (databases
the snapshot lacks are dropped) → write the volumes exactly → start what was
running and wait until running (and healthy) → `restore.post` hooks.

Any failure from the hooks on → the safety snapshot is restored the same way
and the app started, and the error (`RESTORE_FAILED`) says what failed and
whether the rollback worked. The app is never left stopped without saying so.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
import docker.errors

from sidecar.docker.apps import App, VolumeInfo
from sidecar.errors import AppPolicyInvalid, BackupError, InvalidRequest, RestoreFailed
from sidecar.jobs.backup import JobContext, backup_app_locked, run_hooks
from sidecar.jobs.dumps import load_database, wait_database_ready
from sidecar.jobs.locks import AppLock
from sidecar.jobs.verify import verify_snapshot
from sidecar.repo.export import open_stream_file
from sidecar.repo.retention import SAFETY_TAG
from sidecar.repo.snapshot import SnapshotRecord

log = logging.getLogger(__name__)


@dataclass
class RestoreOptions:
    safety: bool = True
    stop_app: bool = True
    restore_database: bool = True
    volumes: list[str] | None = None  # volume keys or names; None = all in the snapshot
    verify_data: bool = False
    wait_timeout: float = 120.0


@dataclass
class AppRestoreResult:
    snapshot_id: str
    safety_snapshot_id: str | None
    volumes: list[dict] = field(default_factory=list)
    databases: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each phase, in order

    def to_json(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id,
            "safety_snapshot_id": self.safety_snapshot_id,
            "volumes": self.volumes,
            "databases": self.databases,
            "warnings": self.warnings,
            "duration_s": round(self.duration_s, 3),
            "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
        }


Progress = Callable[[str, int, int], None]  # phase, bytes done, bytes total


class _PhaseClock:
    """Passes progress on and times each phase (from its first report to the next phase's)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self.phases: dict[str, float] = {}
        self._phase: str | None = None
        self._since = time.monotonic()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase:
            self.stop()
            self._phase = phase
        self._progress(phase, done, total)

    def stop(self) -> None:
        now = time.monotonic()
        if self._phase is not None:
            self.phases[self._phase] = self.phases.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = None, now


def resolve_volumes(app: App, snapshot: SnapshotRecord, requested: list[str] | None) -> list[str] | None:
    """The snapshot's volume keys for `requested` names (compose keys or volume names);
    InvalidRequest naming any that the snapshot does not hold (nothing is skipped silently)."""
    if requested is None:
        return None
    keys = sorted(s.name.removeprefix("volume:") for s in snapshot.sources if s.kind == "volume")
    by_name = {v.name: v.key for v in app.volumes}
    resolved, unknown = [], []
    for item in requested:
        key = item if item in keys else by_name.get(item)
        if key in keys:
            resolved.append(key)
        else:
            unknown.append(item)
    if unknown:
        held = ", ".join(keys) or "none"
        raise InvalidRequest(f"volumes: {', '.join(unknown)} not in snapshot {snapshot.id[:8]} (its volumes: {held})")
    return resolved


def restore_app(
    ctx: JobContext,
    app: App,
    snapshot: SnapshotRecord,
    options: RestoreOptions | None = None,
    progress: Progress = lambda phase, done, total: None,
) -> AppRestoreResult:
    options = options or RestoreOptions()
    if app.policy.errors:
        details = "; ".join(str(e) for e in app.policy.errors)
        raise AppPolicyInvalid(f"app {app.app_id}: fix its labels before restoring it: {details}")
    if snapshot.app_id != app.app_id:
        raise RestoreFailed(f"snapshot {snapshot.id[:8]} belongs to app {snapshot.app_id}, not {app.app_id}")
    options = dataclasses.replace(options, volumes=resolve_volumes(app, snapshot, options.volumes))
    t0 = time.monotonic()
    progress = clock = _PhaseClock(progress)
    with AppLock(ctx.state_dir / "locks", app.app_id, "restore", ctx.lock_wait):
        progress("verifying", 0, snapshot.totals.bytes)
        verify_snapshot(ctx.repo, snapshot, options.verify_data)
        safety: SnapshotRecord | None = None
        if options.safety:
            progress("safety snapshot", 0, 0)
            try:
                safety = backup_app_locked(
                    ctx,
                    app,
                    tags=[SAFETY_TAG],
                    description=f"before restoring {snapshot.id[:8]}",
                    reuse_unchanged_dumps=True,
                ).snapshot
            except BackupError as exc:
                raise RestoreFailed(
                    f"app {app.app_id}: the safety snapshot failed, nothing was restored: {exc}"
                ) from None
        result = AppRestoreResult(snapshot.id, safety.id if safety else None)
        running = {c.id for c in app.containers if _running(ctx.client, c.id)}
        try:
            _apply(ctx, app, snapshot, options, running, result, progress)
        except _NothingChanged as exc:
            raise RestoreFailed(
                f"app {app.app_id}: restore of {snapshot.id[:8]} refused by its {exc}; nothing was changed"
            ) from None
        except BaseException as exc:
            cause = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackupError) else str(exc)
            log.error("app %s: restore of %s failed: %s", app.app_id, snapshot.id[:8], cause)
            if safety is None:
                start_errors = _start(ctx, running, options.wait_timeout)
                state = "started again" if not start_errors else "NOT all running: " + "; ".join(start_errors)
                raise RestoreFailed(
                    f"app {app.app_id}: restore of {snapshot.id[:8]} failed: {cause}. There was no safety snapshot "
                    f"(--no-safety): the app may be half-restored; its containers were {state}"
                ) from exc
            progress("rolling back", 0, safety.totals.bytes)
            try:
                rollback = AppRestoreResult(safety.id, None)
                back = RestoreOptions(wait_timeout=options.wait_timeout)
                _apply(ctx, app, safety, back, running, rollback, progress, pre_hooks_must_pass=False)
            except BaseException as again:
                _start(ctx, running, options.wait_timeout)
                raise RestoreFailed(
                    f"app {app.app_id}: restore of {snapshot.id[:8]} failed: {cause}; THE ROLLBACK TO SAFETY "
                    f"SNAPSHOT {safety.id[:8]} FAILED TOO: {again}. Restore {safety.id[:8]} by hand."
                ) from exc
            raise RestoreFailed(
                f"app {app.app_id}: restore of {snapshot.id[:8]} failed: {cause}; rolled back to the safety "
                f"snapshot {safety.id[:8]} (the state before the restore), and the app is running"
            ) from exc
    result.duration_s = time.monotonic() - t0
    clock.stop()
    result.phases = clock.phases
    progress("done", snapshot.totals.bytes, snapshot.totals.bytes)
    log.info("app %s: restored snapshot %s in %.1f s", app.app_id, snapshot.id[:8], result.duration_s)
    return result


def _running(client: docker.DockerClient, cid: str) -> bool:
    try:
        return bool(client.api.inspect_container(cid)["State"]["Running"])
    except docker.errors.NotFound:
        return False


class _NothingChanged(RestoreFailed):
    """A restore.pre hook refused: nothing was stopped or written, so there is nothing to roll back."""


def _apply(
    ctx: JobContext,
    app: App,
    snapshot: SnapshotRecord,
    options: RestoreOptions,
    running: set[str],
    result: AppRestoreResult,
    progress: Progress,
    pre_hooks_must_pass: bool = True,
) -> None:
    """Steps 4-7 for `snapshot`; raises on the first failure (containers may then be stopped).
    A failing restore.pre hook raises `_NothingChanged`, or is only a warning in a rollback."""
    client = ctx.client
    hooks: list = []
    progress("stopping", 0, snapshot.totals.bytes)
    failed = run_hooks(client, app, "restore.pre", hooks)
    if failed is not None:
        if pre_hooks_must_pass:
            raise _NothingChanged(failed.describe())  # before anything was stopped or written
        result.warnings.append(f"{failed.describe()} (going on: this is a rollback)")
    db_names = app.policy.db_containers()
    if options.stop_app:
        for c in app.containers:
            if c.name not in db_names and _running(client, c.id):
                client.api.stop(c.id, timeout=30)
    ctx.on_phase("stopped", app)
    total = snapshot.totals.bytes
    # the databases load (inside their containers) while the volumes are written: independent work
    progress("databases and volumes", 0, total)
    loads: threading.Thread | None = None
    load_error: list[BaseException] = []
    if options.restore_database and app.policy.databases:

        def load_all() -> None:
            try:
                _load_databases(ctx, app, snapshot, options, result)
            except BaseException as exc:
                load_error.append(exc)

        loads = threading.Thread(target=load_all, name=f"restore-databases-{app.app_id}", daemon=True)
        loads.start()
    try:
        _write_volumes(ctx, app, snapshot, options, result)
    finally:
        if loads is not None:
            loads.join()  # a failure of either waits for the other: the rollback must not race a load
    if load_error:
        raise load_error[0]
    progress("starting", total, total)
    errors = _start(ctx, running, options.wait_timeout)
    if errors:
        raise RestoreFailed("; ".join(errors))
    ctx.on_phase("started", app)
    post: list = []
    failed = run_hooks(client, app, "restore.post", post)
    if failed is not None:
        raise RestoreFailed(f"{failed.describe()}")
    for run in post:
        if not run.ok:
            result.warnings.append(run.describe())


def _load_databases(
    ctx: JobContext, app: App, snapshot: SnapshotRecord, options: RestoreOptions, result: AppRestoreResult
) -> None:
    client = ctx.client
    for spec in app.policy.databases:
        container = app.container(spec.container)
        if container is None:
            raise RestoreFailed(f"database container {spec.container} is gone")
        name = _db_source(snapshot, spec.container, container.service)
        if name is None:
            result.warnings.append(f"snapshot has no dump of {spec.container}; its database was left as it is")
            continue
        if not _running(client, container.id):
            client.api.start(container.id)
        wait_database_ready(client, container, spec, options.wait_timeout)
        ctx.on_phase("loading", app)
        with open_stream_file(ctx.repo, snapshot, name) as dump:
            dropped = load_database(client, container, spec, dump, exact=True)
        size = snapshot.source(name).stats.bytes
        result.databases.append({"source": name, "container": spec.container, "bytes": size, "dropped": dropped})


def _write_volumes(
    ctx: JobContext, app: App, snapshot: SnapshotRecord, options: RestoreOptions, result: AppRestoreResult
) -> None:
    for source in snapshot.sources:
        if source.kind != "volume":
            continue
        key = source.name.removeprefix("volume:")
        if options.volumes is not None and key not in options.volumes:
            continue
        volume = _volume_for(ctx, app, key)
        ctx.on_phase("writing", app)
        ctx.volume_access.restore(ctx.repo, snapshot, source.name, app, volume, delete=True)
        how = ctx.volume_access.how(volume)
        if how == "archive":
            result.warnings.append(
                f"volume {volume.name} was written through Docker's archive API: files the snapshot lacks were not "
                "removed, mtimes are whole seconds"
            )
        result.volumes.append({"source": source.name, "volume": volume.name, "access": how})


def _db_source(snapshot: SnapshotRecord, container: str, service: str | None) -> str | None:
    for name in (f"database:{service}" if service else None, f"database:{container}"):
        if name and snapshot.source(name) is not None:
            return name
    return None


def _volume_for(ctx: JobContext, app: App, key: str) -> VolumeInfo:
    """The app's volume with this compose key (or name); re-created with its compose labels if gone."""
    for volume in app.volumes:
        if key in (volume.key, volume.name):
            try:
                attrs = ctx.client.api.inspect_volume(volume.name)
                return VolumeInfo.from_inspect(attrs)
            except docker.errors.NotFound:
                labels = {"com.docker.compose.project": app.app_id, "com.docker.compose.volume": volume.key}
                attrs = ctx.client.api.create_volume(volume.name, labels=labels)
                log.warning("app %s: volume %s was gone; re-created it", app.app_id, volume.name)
                return VolumeInfo.from_inspect(attrs)
    raise RestoreFailed(
        f"the snapshot has volume {key!r}, which no container of app {app.app_id} mounts now "
        "(re-create the app's containers first, e.g. `docker-compose up -d`)"
    )


def _start(ctx: JobContext, running: set[str], timeout: float) -> list[str]:
    """Start what was running before; wait until running (and healthy, where there is a health check)."""
    client = ctx.client
    errors = []
    for cid in running:
        try:
            if not _running(client, cid):
                client.api.start(cid)
        except docker.errors.APIError as exc:
            errors.append(f"cannot start {cid[:12]}: {exc.explanation}")
    deadline = time.monotonic() + timeout
    pending = set(running)
    while pending and time.monotonic() < deadline:
        for cid in list(pending):
            try:
                state = client.api.inspect_container(cid)["State"]
            except docker.errors.NotFound:
                errors.append(f"container {cid[:12]} is gone")
                pending.discard(cid)
                continue
            health = (state.get("Health") or {}).get("Status")
            if state.get("Running") and health in (None, "healthy"):
                pending.discard(cid)
        if pending:
            time.sleep(0.5)
    for cid in pending:
        errors.append(f"container {cid[:12]} is not running (and healthy) after {timeout:.0f} s")
    return errors
