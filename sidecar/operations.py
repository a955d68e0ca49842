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
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peewee import fn

from sidecar.catalog.models import AppState, Backup
from sidecar.catalog.records import Catalog, RepositoryInfo, backup_to_dict, iso_time
from sidecar.errors import (
    AppPolicyInvalid,
    BackupCorrupted,
    BackupError,
    BackupNotFound,
    DockerUnavailable,
    InvalidRequest,
)
from sidecar.jobs.child import ChildSpec, run_in_child
from sidecar.jobs.runner import Finished, JobProgress, JobRunner
from sidecar.repo.repository import Repository
from sidecar.repo.retention import RetentionPolicy
from sidecar.repo.snapshot import BACKUP_TYPES, SnapshotRecord, new_backup_id

if TYPE_CHECKING:
    import docker

    from sidecar.docker.apps import App, Registry
    from sidecar.jobs.scheduler import Scheduler
    from sidecar.metrics import Metrics

log = logging.getLogger(__name__)


def _ignore(job_id: str, result: dict | None, error: BackupError | None) -> None:
    pass


@dataclass
class BackupRequest:
    backup_type: str | None = None  # None: the app's label, else incremental
    description: str | None = None
    include_database: bool = True
    include_volumes: bool = True  # an API schedule's include_uploads
    tags: list[str] = field(default_factory=list)
    retention: RetentionPolicy | None = None  # applied to the app's snapshots after a successful backup


@dataclass
class RestoreRequest:
    stop_app: bool = True
    restore_database: bool = True
    volumes: list[str] | None = None
    safety: bool = True
    verify_data: bool = False


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
    tz: tzinfo = UTC  # retention's days/weeks/months are counted in it (TZ)
    scheduler: Scheduler | None = None  # serve's; for the next runs GET /apps shows

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
        """Every app with its policy, schedules, last backup and state: a fixed number of
        queries, whatever the number of apps (GET /apps is polled)."""
        from sidecar.catalog.models import BackupSchedule

        states = {s.app_id: s for s in AppState.select()}
        latest = Backup.select(Backup.app_id, fn.MAX(Backup.created_at).alias("at")).group_by(Backup.app_id)
        last_backups: dict[str, Backup] = {}
        for row in Backup.select().join(
            latest, on=((Backup.app_id == latest.c.app_id) & (Backup.created_at == latest.c.at))
        ):
            last_backups.setdefault(row.app_id, row)
        api_schedules: dict[str, list] = {}
        for row in BackupSchedule.select().order_by(BackupSchedule.created_at):
            api_schedules.setdefault(row.app_id, []).append(row)
        out = []
        for app in sorted(self._registry().apps(), key=lambda a: a.app_id):
            doc = app.to_dict()
            doc["schedules"] = self.schedules_of(app, api_schedules.get(app.app_id, []))
            runs = [s["next_run"] for s in doc["schedules"] if s.get("next_run")]
            doc["next_run"] = min(runs) if runs else None
            doc["busy_job_id"] = self.runner.busy(app.app_id)
            state = states.get(app.app_id)
            last = last_backups.get(app.app_id)
            doc["last_backup"] = None if last is None else backup_to_dict(last)
            doc["last_success_at"] = iso_time(state.last_success_at) if state else None
            doc["last_error"] = state.last_error if state else None
            out.append(doc)
        return out

    def schedules_of(self, app: App, api_rows: list | None = None) -> list[dict]:
        """The app's label schedule and API schedules (`api_rows`, else read from the catalog),
        each with its next run (and, from the running scheduler, whether a run is queued and how
        the last one ended)."""
        from sidecar.catalog.models import BackupSchedule
        from sidecar.jobs.timing import timing_of_fields, timing_of_label

        found: list[tuple[str, str, Callable[[], Any]]] = []
        if app.policy.schedule:
            found.append(("label:" + app.app_id, "label", lambda: timing_of_label(app.policy.schedule or "")))
        if api_rows is None:
            query = BackupSchedule.select().where(BackupSchedule.app_id == app.app_id)
            api_rows = list(query.order_by(BackupSchedule.created_at))
        for row in api_rows:
            fields = (row.frequency, row.time, row.day_of_week, row.day_of_month, row.cron)
            found.append((row.schedule_id, "api", lambda f=fields: timing_of_fields(*f)))
        out = []
        for key, source, timing in found:
            runnable = not app.policy.errors and (source == "api" or app.policy.enabled)
            out.append(
                {"schedule_id": key, "source": source, **self.schedule_status(key, timing if runnable else None)}
            )
        return out

    def schedule_status(self, key: str, timing: Callable[[], Any] | None) -> dict:
        """The running scheduler's view of a schedule; without one (a CLI, a test) only when it
        would run next (`timing` None: it would not run)."""
        from sidecar.jobs.timing import iso_z, next_run

        if self.scheduler is not None:
            return self.scheduler.describe(key)
        try:
            return {"next_run": None if timing is None else iso_z(next_run(timing(), datetime.now(UTC), self.tz))}
        except (InvalidRequest, ValueError):
            return {"next_run": None}

    def _job_context(self, repo: Repository):
        from sidecar.docker.volumes import VolumeAccess
        from sidecar.jobs.backup import JobContext

        if self.docker_client is None:
            raise DockerUnavailable("this sidecar runs without Docker")
        client = self.docker_client()
        return JobContext(client, repo, self.state_dir, VolumeAccess(client, self.volume_access_mode))

    # ---- backups ---------------------------------------------------------------------------

    def start_backup(
        self,
        app_id: str,
        request: BackupRequest,
        *,
        on_finish: Finished | None = None,
        final_attempt: bool = True,
    ) -> tuple[str, Backup]:
        """Check, record `in_progress`, queue; returns the job id and the backup row.
        `final_attempt=False` (the scheduler will retry a failure): a failure is recorded on the
        job and the backup record but counted as a retry, not as a failed backup."""
        from sidecar.jobs.backup import check_backupable

        app = self.app(app_id)
        check_backupable(app)
        app.backup_volumes()  # a wrong volumes label is refused now, not in the job
        if request.backup_type is not None and request.backup_type not in BACKUP_TYPES:
            raise InvalidRequest(f"backup_type: must be one of {', '.join(BACKUP_TYPES)}")
        if not (request.include_database or request.include_volumes):
            raise InvalidRequest("a backup with neither databases nor volumes holds nothing")
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
                    include_volumes=request.include_volumes,
                    backup_id=backup_id,
                )
            except BaseException as exc:
                message = exc.message if isinstance(exc, BackupError) else f"interrupted: {type(exc).__name__}"
                if not final_attempt:
                    message += " (the scheduler will try again)"
                self.catalog.fail_backup(backup_id, message)
                self.catalog.note_result(app_id, app.app_name, None, message)
                if self.metrics:
                    seconds = time.monotonic() - started
                    self.metrics.backup_finished(app_id, backup_type, seconds, None, retrying=not final_attempt)
                raise
            self.catalog.record_snapshot(result.snapshot, self.repo_info, job.job_id)
            self.catalog.note_result(app_id, app.app_name, backup_id, None)
            if self.metrics:
                added = result.snapshot.totals.added_bytes
                self.metrics.backup_finished(app_id, backup_type, time.monotonic() - started, added)
            out = {"backup_id": backup_id, "snapshot_id": result.snapshot.id, "warnings": result.warnings}
            if request.retention is not None:
                progress.set_phase("applying retention")
                out.update(self.apply_retention(app_id, request.retention))
            return out

        try:
            self.runner.submit(job.job_id, app_id, run, on_finish or _ignore)
        except BackupError as exc:
            self.catalog.delete_backup(backup_id)
            self.catalog.finish_job(job.job_id, "failed", error=exc.message, error_code=exc.code)
            raise
        return job.job_id, row

    def apply_retention(self, app_id: str, policy: RetentionPolicy) -> dict:
        """Forget the app's snapshots `policy` does not keep (after a scheduled backup);
        returns {"forgotten": [backup ids]} or, when it could not, {"retention_error": why}.
        The data they alone used is freed by the next prune."""
        from sidecar.repo.forget import plan_forget, remove_snapshots

        try:
            repo = self.open_repo()
            decisions = plan_forget(repo, policy, app_id=app_id, tz=self.tz).get(app_id, [])
            gone = [d.snapshot for d in decisions if not d.keep]
            if gone:
                remove_snapshots(repo, [s.id for s in gone], lock_wait=600)
        except BackupError as exc:
            log.error("app %s: retention %s not applied: %s", app_id, policy.describe(), exc.message)
            return {"forgotten": [], "retention_error": exc.message}
        forgotten = self.catalog.forget_snapshots([s.id for s in gone])
        for snap in gone:
            log.info(
                "app %s: retention %s forgot snapshot %s of %s",
                app_id,
                policy.describe(),
                snap.id[:8],
                snap.time.isoformat(timespec="seconds"),
            )
        if self.metrics and gone:
            self.metrics.forgotten(app_id, len(gone))
        return {"forgotten": forgotten, "retention": policy.describe()}

    def start_prune(self, on_finish: Finished | None = None) -> str:
        """Prune as a job (exclusive repository lock: it waits for running backups)."""
        from sidecar.repo.prune import prune_repository

        job = self.catalog.create_job("prune")

        def run(progress: JobProgress) -> dict:
            progress.set_phase("pruning")
            if self.child is not None:
                report = run_in_child(self.child, "prune", {}, progress)
            else:
                report = prune_repository(self.open_repo(), lock_wait=3600).to_json()
            log.info("prune: %s", report)
            if self.metrics:
                self.metrics.repository_changed()
            return report

        self.runner.submit(job.job_id, None, run, on_finish or _ignore)
        return job.job_id

    def start_check(self, read_data_percent: float = 10.0) -> str:
        """`check --read-data PERCENT` of the whole repository as a job (the dashboard's Verify)."""
        from sidecar.repo.check import check_repository, summary

        job = self.catalog.create_job("check")

        def run(progress: JobProgress) -> dict:
            progress.set_phase("checking")
            if self.child is not None:
                report = run_in_child(self.child, "check", {"read_data_percent": read_data_percent}, progress)
            else:
                repo = self.open_repo()
                with repo.lock("shared", "check", 600):
                    report = summary(check_repository(repo, read_data_percent).to_json())
            if not report["ok"]:
                raise BackupCorrupted(
                    f"the repository has damage: {'; '.join(report['errors'][:5])}"
                    f" ({report['affected_snapshots']} snapshots affected; `check --read-data` lists the files)"
                )
            return {**report, "read_data_percent": read_data_percent}

        self.runner.submit(job.job_id, None, run)
        return job.job_id

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
                {
                    "name": s.name,
                    "kind": s.kind,
                    "engine": s.engine,
                    "stats": s.to_json()["stats"],
                    **({"reused_from": s.reused_from} if s.reused_from else {}),
                }
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
