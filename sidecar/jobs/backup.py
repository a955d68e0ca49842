"""The backup of one Docker app, in the order of DESIGN.md §4.

lock app → `pre` hooks → database dumps (sidecar.jobs.dumps) → stop the
`stop=true` containers → read the volumes → restart what was stopped (always)
→ `post` hooks (always, once `pre` hooks have started) → write the snapshot.

Containers stopped for a backup are written down in the state directory
before they are stopped; if the job dies before restarting them, the next
job or the daemon's start-up (`restart_left_stopped`) starts them again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from sidecar.docker.apps import App, ContainerInfo
from sidecar.docker.execs import run_shell
from sidecar.docker.volumes import VolumeAccess
from sidecar.errors import AppPolicyInvalid, BackupCreateFailed, BackupError
from sidecar.jobs.dumps import dump_databases
from sidecar.jobs.locks import AppLock
from sidecar.labels import Hook
from sidecar.repo.backup import BackupOptions, BackupSession, Progress
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SnapshotRecord

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30  # seconds Docker gives a container to stop before it kills it


@dataclass
class HookRun:
    phase: str
    container: str
    command: str
    exit_code: int | None
    timed_out: bool
    duration_s: float
    output: str
    on_error: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def describe(self) -> str:
        what = f"killed after its {self.duration_s:.0f} s timeout" if self.timed_out else f"exited {self.exit_code}"
        tail = self.output.strip().splitlines()[-1][:200] if self.output.strip() else ""
        return f"{self.phase} hook in {self.container} {what}" + (f": {tail}" if tail else "")

    def to_dict(self) -> dict:
        return {
            "phase": self.phase,
            "container": self.container,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration_s": round(self.duration_s, 3),
            "output": self.output[-1000:],
        }


@dataclass
class AppBackupResult:
    snapshot: SnapshotRecord
    hooks: list[HookRun] = field(default_factory=list)
    # {"source", "volume", "access"} for volumes, {"source", "engine", "bytes"} for database dumps
    volumes: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class JobContext:
    """What a job needs from its surroundings."""

    client: docker.DockerClient
    repo: Repository
    state_dir: Path  # per-app locks and the list of containers stopped by a running job
    volume_access: VolumeAccess
    lock_wait: float = 0.0
    # called with a phase name ("stopped", "read", "restarted") — for tests and progress
    on_phase: Callable[[str, App], None] = field(default=lambda phase, app: None)


def volume_source_name(key: str) -> str:
    return f"volume:{key}"


def explicitly_disabled(app: App) -> bool:
    return any(c.labels.get("websoft9.backup.enable", "").strip().lower() == "false" for c in app.containers)


def check_backupable(app: App) -> None:
    if app.policy.errors:
        details = "; ".join(str(e) for e in app.policy.errors)
        raise AppPolicyInvalid(f"app {app.app_id} is not backed up until its labels are fixed: {details}")
    if explicitly_disabled(app):
        raise AppPolicyInvalid(f"app {app.app_id} has backups disabled (websoft9.backup.enable=false)")


# ---- hooks ---------------------------------------------------------------------------------


def run_hook(client: docker.DockerClient, app: App, hook: Hook) -> HookRun:
    container = app.container(hook.container)
    if container is None or not container.running:
        state = "gone" if container is None else container.status or "not running"
        return HookRun(
            hook.phase, hook.container, hook.command, None, False, 0.0, f"container is {state}", hook.on_error
        )
    result = run_shell(client, container.id, hook.command, user=hook.user, timeout=hook.timeout_s)
    run = HookRun(
        hook.phase,
        hook.container,
        hook.command,
        result.exit_code,
        result.timed_out,
        result.duration_s,
        result.output,
        hook.on_error,
    )
    level = logging.INFO if run.ok else logging.WARNING
    log.log(level, "app %s: %s (%.1f s)", app.app_id, run.describe(), run.duration_s)
    if run.output:
        log.log(level, "app %s: %s hook output: %s", app.app_id, hook.phase, run.output[-1000:])
    return run


def run_hooks(client: docker.DockerClient, app: App, phase: str, runs: list[HookRun]) -> HookRun | None:
    """Run the app's hooks of `phase`; returns the first failed `on_error=fail` hook (and stops there)."""
    for hook in app.policy.hooks_for(phase):
        run = run_hook(client, app, hook)
        runs.append(run)
        if not run.ok and hook.on_error == "fail":
            return run
    return None


# ---- containers stopped for a backup ---------------------------------------------------------


class StoppedLedger:
    """Containers this job stopped, on disk until they run again."""

    def __init__(self, state_dir: Path, app_id: str) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in app_id)[:64]
        self.path = state_dir / f"stopped-{safe}-{abs(hash(app_id)) % 10**8}.json"
        self.app_id = app_id
        self.ids: list[str] = []

    def add(self, container_id: str) -> None:
        self.ids.append(container_id)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"app_id": self.app_id, "containers": self.ids}))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.ids = []
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def restart_left_stopped(client: docker.DockerClient, state_dir: Path) -> list[str]:
    """Start containers an interrupted backup stopped and never restarted; returns their ids."""
    started: list[str] = []
    if not state_dir.is_dir():
        return started
    for path in sorted(state_dir.glob("stopped-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        ok = True
        for cid in doc.get("containers", []):
            try:
                client.api.start(cid)
                started.append(cid)
                log.warning(
                    "app %s: restarted container %s left stopped by an interrupted backup", doc.get("app_id"), cid[:12]
                )
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                ok = False
                log.error("app %s: cannot restart container %s: %s", doc.get("app_id"), cid[:12], exc.explanation)
        if ok:
            path.unlink(missing_ok=True)
    return started


def _stop(ctx: JobContext, app: App, ledger: StoppedLedger) -> None:
    for name in app.policy.stop:
        container = app.container(name)
        if container is None or not _running(ctx.client, container):
            continue
        ledger.add(container.id)  # written down first: a crash from here on still gets it restarted
        log.info("app %s: stopping %s for the backup", app.app_id, name)
        try:
            ctx.client.api.stop(container.id, timeout=STOP_TIMEOUT)
        except docker.errors.APIError as exc:
            raise BackupCreateFailed(f"app {app.app_id}: cannot stop {name}: {exc.explanation}") from None


def _restart(ctx: JobContext, app: App, ledger: StoppedLedger) -> list[str]:
    """Start everything the ledger names; returns the errors (the job reports them)."""
    errors = []
    for cid in ledger.ids:
        try:
            ctx.client.api.start(cid)
            log.info("app %s: started %s again", app.app_id, cid[:12])
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            errors.append(f"cannot restart container {cid[:12]}: {exc.explanation}")
    if not errors:
        ledger.clear()
    return errors


def _running(client: docker.DockerClient, container: ContainerInfo) -> bool:
    try:
        return bool(client.api.inspect_container(container.id)["State"]["Running"])
    except docker.errors.NotFound:
        return False


# ---- the job -------------------------------------------------------------------------------------


def backup_app(
    ctx: JobContext,
    app: App,
    *,
    backup_type: str | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
    progress: Progress | None = None,
    include_database: bool = True,
    include_volumes: bool = True,
    backup_id: str | None = None,
) -> AppBackupResult:
    """Back up `app` now; raises a `BackupError` and records nothing when it fails."""
    check_backupable(app)
    app.backup_volumes()  # a wrong volumes label fails before anything runs
    with AppLock(ctx.state_dir / "locks", app.app_id, "backup", ctx.lock_wait):
        return backup_app_locked(
            ctx,
            app,
            backup_type=backup_type,
            tags=tags,
            description=description,
            progress=progress,
            include_database=include_database,
            include_volumes=include_volumes,
            backup_id=backup_id,
        )


def backup_app_locked(
    ctx: JobContext,
    app: App,
    *,
    backup_type: str | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
    progress: Progress | None = None,
    include_database: bool = True,
    include_volumes: bool = True,
    backup_id: str | None = None,
    reuse_unchanged_dumps: bool = False,
) -> AppBackupResult:
    """`backup_app` for a caller that holds the app's lock (a restore's safety snapshot, which
    passes `reuse_unchanged_dumps`: see `dump_databases`)."""
    policy = app.policy
    volumes = app.backup_volumes() if include_volumes else []
    restart_left_stopped(ctx.client, ctx.state_dir)
    hooks: list[HookRun] = []
    warnings: list[str] = []
    failure: BaseException | None = None
    session: BackupSession | None = None
    sources: list[dict] = []
    try:
        failed = run_hooks(ctx.client, app, "pre", hooks)
        if failed is not None:
            raise BackupCreateFailed(f"app {app.app_id}: {failed.describe()}; the backup was not made")
        options = BackupOptions(
            app_id=app.app_id,
            app_name=app.app_name,
            backup_type=backup_type or policy.backup_type,
            tags=list(tags or []),
            description=description,
            backup_id=backup_id,
        )
        session = BackupSession(ctx.repo, options, progress)
        if include_database:
            for record in dump_databases(ctx.client, app, session, reuse_unchanged_dumps):
                source = {"source": record.name, "engine": record.engine, "bytes": record.stats.bytes}
                if record.reused_from:
                    source["reused_from"] = record.reused_from
                sources.append(source)
            ctx.on_phase("dumped", app)
        ledger = StoppedLedger(ctx.state_dir, app.app_id)
        try:
            _stop(ctx, app, ledger)
            ctx.on_phase("stopped", app)
            for volume in volumes:
                name = volume_source_name(volume.key)
                how = ctx.volume_access.how(volume)
                ctx.volume_access.back_up(session, app, volume, name, policy.exclude)
                sources.append({"source": name, "volume": volume.name, "access": how})
            ctx.on_phase("read", app)
        finally:
            restart_errors = _restart(ctx, app, ledger)
            ctx.on_phase("restarted", app)
        if restart_errors:
            raise BackupCreateFailed(f"app {app.app_id}: " + "; ".join(restart_errors))
    except BaseException as exc:
        failure = exc
    finally:
        post_failed = run_hooks(ctx.client, app, "post", hooks)
    for run in hooks:
        if not run.ok and run.on_error == "continue":
            warnings.append(run.describe())
    if failure is None and post_failed is not None:
        failure = BackupCreateFailed(f"app {app.app_id}: {post_failed.describe()}; the backup was not recorded")
    if failure is not None:
        if session is not None:
            session.abort()
        if isinstance(failure, BackupError) or not isinstance(failure, Exception):
            raise failure
        raise BackupCreateFailed(f"app {app.app_id}: {failure}") from failure
    assert session is not None
    if not session.sources:
        session.abort()
        raise BackupCreateFailed(f"app {app.app_id} has nothing to back up (no named volumes, no databases)")
    for text in warnings:
        session.warnings.append({"source": "hooks", "path": "", "error": text})
    snapshot = session.commit()
    log.info("app %s: snapshot %s saved (%s)", app.app_id, snapshot.id[:8], snapshot.backup_type)
    return AppBackupResult(snapshot, hooks, sources, warnings)
