"""What the API (and later the scheduler) asks of the sidecar: start backups,
restores and verifications as jobs, delete and export backups, describe apps.
Requests are checked here before any job starts, so a bad one is refused at
once (404/400/409) and a started one only fails for reasons found while it runs.

Each job opens its own `Repository` (the master key is unlocked once), so two
jobs never share an in-memory index."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.catalog.models import AppState, Backup
from sidecar.catalog.records import Catalog, RepositoryInfo, backup_to_dict, iso_time
from sidecar.errors import AppPolicyInvalid, BackupError, BackupNotFound, DockerUnavailable, InvalidRequest
from sidecar.jobs.child import ChildSpec, run_in_child
from sidecar.jobs.runner import JobProgress, JobRunner
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import BACKUP_TYPES, SnapshotRecord, new_backup_id

if TYPE_CHECKING:
    import docker

    from sidecar.docker.apps import App, Registry
    from sidecar.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class BackupRequest:
    backup_type: str | None = None  # None: the app's label, else incremental
    description: str | None = None
    include_database: bool = True
    tags: list[str] = field(default_factory=list)


@dataclass
class RestoreRequest:
    stop_app: bool = True
    restore_database: bool = True
    volumes: list[str] | None = None
    safety: bool = True
    verify_data: bool = False


def next_run(schedule: str | None, after: datetime | None = None) -> str | None:
    """ISO time of the next run of a cron schedule (UTC), or None."""
    if not schedule:
        return None
    from croniter import croniter

    try:
        when = croniter(schedule, after or datetime.now(UTC)).get_next(datetime)
    except (ValueError, KeyError):
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Operations:
    catalog: Catalog
    runner: JobRunner
    open_repo: Callable[[], Repository]
    repo_info: RepositoryInfo
    state_dir: Path
    registry: Registry | None = None
    docker_client: Callable[[], docker.DockerClient] | None = None
    volume_access_mode: str = "auto"
    metrics: Metrics | None = None
    child: ChildSpec | None = None  # run jobs in processes of their own (serve); None: in a thread here

    def _backup_now(self, app: App, progress: JobProgress, **kwargs: Any):  # type: ignore[no-untyped-def]
        from sidecar.jobs.backup import backup_app

        if self.child is not None:
            return run_in_child(self.child, "backup", {"app": app, **kwargs}, progress)
        return backup_app(self._job_context(self.open_repo()), app, progress=progress, **kwargs)

    # ---- apps ------------------------------------------------------------------------------

    def _registry(self) -> Registry:
        if self.registry is None:
            raise DockerUnavailable("this sidecar runs without Docker: it has no apps")
        return self.registry

    def app(self, app_id: str) -> App:
        return self._registry().require(app_id)

    def apps(self) -> list[dict]:
        states = {s.app_id: s for s in AppState.select()}
        out = []
        for app in sorted(self._registry().apps(), key=lambda a: a.app_id):
            doc = app.to_dict()
            doc["next_run"] = next_run(app.policy.schedule) if app.policy.enabled and not app.policy.errors else None
            doc["busy_job_id"] = self.runner.busy(app.app_id)
            state = states.get(app.app_id)
            last = (
                Backup.select().where(Backup.app_id == app.app_id).order_by(Backup.created_at.desc()).first()
            )  # fmt: skip
            doc["last_backup"] = None if last is None else backup_to_dict(last)
            doc["last_success_at"] = iso_time(state.last_success_at) if state else None
            doc["last_error"] = state.last_error if state else None
            out.append(doc)
        return out

    def _job_context(self, repo: Repository):
        from sidecar.docker.volumes import VolumeAccess
        from sidecar.jobs.backup import JobContext

        if self.docker_client is None:
            raise DockerUnavailable("this sidecar runs without Docker")
        client = self.docker_client()
        return JobContext(client, repo, self.state_dir, VolumeAccess(client, self.volume_access_mode))

    # ---- backups ---------------------------------------------------------------------------

    def start_backup(self, app_id: str, request: BackupRequest) -> tuple[str, Backup]:
        """Check, record `in_progress`, queue; returns the job id and the backup row."""
        from sidecar.jobs.backup import check_backupable

        app = self.app(app_id)
        check_backupable(app)
        app.backup_volumes()  # a wrong volumes label is refused now, not in the job
        if request.backup_type is not None and request.backup_type not in BACKUP_TYPES:
            raise InvalidRequest(f"backup_type: must be one of {', '.join(BACKUP_TYPES)}")
        backup_type = request.backup_type or app.policy.backup_type
        backup_id = new_backup_id(datetime.now(UTC))
        job = self.catalog.create_job("backup", app_id, backup_id)
        row = self.catalog.start_backup(
            backup_id,
            app_id,
            app.app_name,
            backup_type,
            self.repo_info,
            description=request.description,
            job_id=job.job_id,
        )

        def run(progress: JobProgress) -> dict:
            started = time.monotonic()
            if self.metrics:
                self.metrics.backup_started(app_id, backup_type)
            progress.set_phase("backing up")
            try:
                result = self._backup_now(
                    app,
                    progress,
                    backup_type=backup_type,
                    tags=request.tags,
                    description=request.description,
                    include_database=request.include_database,
                    backup_id=backup_id,
                )
            except BaseException as exc:
                message = exc.message if isinstance(exc, BackupError) else f"interrupted: {type(exc).__name__}"
                self.catalog.fail_backup(backup_id, message)
                self.catalog.note_result(app_id, app.app_name, None, message)
                if self.metrics:
                    self.metrics.backup_finished(app_id, backup_type, time.monotonic() - started, None)
                raise
            self.catalog.record_snapshot(result.snapshot, self.repo_info, job.job_id)
            self.catalog.note_result(app_id, app.app_name, backup_id, None)
            if self.metrics:
                added = result.snapshot.totals.added_bytes
                self.metrics.backup_finished(app_id, backup_type, time.monotonic() - started, added)
            return {"backup_id": backup_id, "snapshot_id": result.snapshot.id, "warnings": result.warnings}

        try:
            self.runner.submit(job.job_id, app_id, run)
        except BackupError as exc:
            self.catalog.delete_backup(backup_id)
            self.catalog.finish_job(job.job_id, "failed", error=exc.message, error_code=exc.code)
            raise
        return job.job_id, row

    # ---- one backup ------------------------------------------------------------------------

    def _snapshot(self, repo: Repository, row: Backup) -> SnapshotRecord:
        if row.status != "completed" or not row.snapshot_id:
            raise InvalidRequest(f"backup {row.backup_id} is {row.status}: it has no snapshot")
        try:
            return repo.load_snapshot(row.snapshot_id)
        except BackupError:
            raise BackupNotFound(
                f"backup {row.backup_id}: its snapshot {row.snapshot_id[:12]} is not in the repository "
                "(run `catalog rebuild`)"
            ) from None

    def backup_detail(self, backup_id: str) -> dict:
        row = self.catalog.get_backup(backup_id)
        doc = backup_to_dict(row)
        doc["sources"] = None
        if row.status == "completed" and row.snapshot_id:
            snap = self._snapshot(self.open_repo(), row)
            doc["sources"] = [
                {"name": s.name, "kind": s.kind, "engine": s.engine, "stats": s.to_json()["stats"]}
                for s in snap.sources
            ]
            doc["warnings"] = snap.warnings
        return doc

    def delete_backup(self, backup_id: str) -> None:
        from sidecar.repo.forget import remove_snapshots

        row = self.catalog.get_backup(backup_id)
        if row.status in ("pending", "in_progress"):
            from sidecar.errors import AppBusy

            raise AppBusy(f"backup {backup_id} is still running")
        if row.snapshot_id:
            remove_snapshots(self.open_repo(), [row.snapshot_id], lock_wait=30)
        self.catalog.delete_backup(backup_id)

    def start_verify(self, backup_id: str) -> str:
        from sidecar.jobs.verify import verify_snapshot

        row = self.catalog.get_backup(backup_id)
        if row.status != "completed":
            raise InvalidRequest(f"backup {backup_id} is {row.status}: there is nothing to verify")
        job = self.catalog.create_job("verify", row.app_id, backup_id)

        def run(progress: JobProgress) -> dict:
            progress.set_phase("reading")
            repo = self.open_repo()
            snapshot = self._snapshot(repo, row)
            if self.child is not None:
                run_in_child(self.child, "verify", {"snapshot_id": snapshot.id}, progress)
            else:
                verify_snapshot(repo, snapshot, read_data=True)
            return {"backup_id": backup_id, "ok": True}

        self.runner.submit(job.job_id, None, run)
        return job.job_id

    def export(self, backup_id: str) -> Iterator[bytes]:
        """The backup as a pax tar stream (made in a thread, handed over in 1 MiB pieces)."""
        from sidecar.repo.export import export_snapshot

        repo = self.open_repo()
        snap = self._snapshot(repo, self.catalog.get_backup(backup_id))
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def produce() -> None:
            with open(write_fd, "wb", buffering=1 << 20) as out:
                try:
                    export_snapshot(repo, snap, out)
                except BrokenPipeError:
                    pass  # the client went away
                except BaseException as exc:
                    failure.append(exc)
                    log.error("export of %s failed: %s", backup_id, exc)

        thread = threading.Thread(target=produce, name=f"export-{backup_id}", daemon=True)
        thread.start()

        def chunks() -> Iterator[bytes]:
            with open(read_fd, "rb", buffering=0) as src:
                while chunk := src.read(1 << 20):
                    yield chunk
            thread.join()
            if failure:  # the tar is cut short: the client sees a truncated archive, not a valid one
                raise RuntimeError("export failed")

        return chunks()

    # ---- restores --------------------------------------------------------------------------

    def start_restore(self, app_id: str, backup_id: str, request: RestoreRequest) -> str:
        from sidecar.jobs.restore import RestoreOptions, resolve_volumes, restore_app

        app = self.app(app_id)
        if app.policy.errors:
            raise AppPolicyInvalid(f"app {app_id}: fix its labels before restoring it")
        row = self.catalog.get_backup(backup_id)
        if row.app_id != app_id:
            raise InvalidRequest(f"backup {backup_id} belongs to app {row.app_id}, not {app_id}")
        if row.status != "completed":
            raise InvalidRequest(f"backup {backup_id} is {row.status}: it cannot be restored")
        if request.volumes is not None:  # a name the backup does not hold is refused now, not skipped
            resolve_volumes(app, self._snapshot(self.open_repo(), row), request.volumes)
        job = self.catalog.create_job("restore", app_id, backup_id)
        options = RestoreOptions(
            safety=request.safety,
            stop_app=request.stop_app,
            restore_database=request.restore_database,
            volumes=request.volumes,
            verify_data=request.verify_data,
        )

        def run(progress: JobProgress) -> dict:
            if self.metrics:
                self.metrics.restore_started(app_id)
            try:
                repo = self.open_repo()
                snapshot = self._snapshot(repo, row)
                if self.child is not None:
                    args = {"app": app, "snapshot_id": snapshot.id, "options": options}
                    result = run_in_child(self.child, "restore", args, progress)
                else:
                    result = restore_app(self._job_context(repo), app, snapshot, options, progress)
            except BaseException:
                if self.metrics:
                    self.metrics.restore_finished(app_id, ok=False)
                raise
            if self.metrics:
                self.metrics.restore_finished(app_id, ok=True)
            if result.safety_snapshot_id:
                safety = repo.load_snapshot(result.safety_snapshot_id)
                self.catalog.record_snapshot(safety, self.repo_info, job.job_id)
            return {"backup_id": backup_id, **result.to_json()}

        try:
            self.runner.submit(job.job_id, app_id, run)
        except BackupError as exc:
            self.catalog.finish_job(job.job_id, "failed", error=exc.message, error_code=exc.code)
            raise
        return job.job_id
