"""What the daemon and the API do with the catalog: backup records (from repository
snapshots, and attempts that failed), jobs with their progress, per-app state."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from peewee import fn

from sidecar.catalog.models import BACKUP_STATUSES, JOB_KINDS, AppState, Backup, Job, database, utcnow
from sidecar.errors import BackupNotFound, InvalidRequest, JobNotFound
from sidecar.repo.snapshot import SnapshotRecord, format_time

MAX_PAGE = 1000


@dataclass(frozen=True)
class RepositoryInfo:
    """Where snapshots live, as the Backup rows describe it."""

    location: str  # a path, or s3://bucket/prefix
    storage_location: str = "local"  # the repository's name in the configuration
    compressed: bool = True

    def object_path(self, snapshot_id: str) -> tuple[str, str | None, str | None]:
        """file_path, s3_bucket, s3_key of a snapshot object."""
        if self.location.startswith("s3://"):
            bucket, _, prefix = self.location[5:].partition("/")
            key = "/".join(p for p in (prefix.strip("/"), "snapshots", snapshot_id) if p)
            return f"s3://{bucket}/{key}", bucket, key
        return f"{self.location.rstrip('/')}/snapshots/{snapshot_id}", None, None


def _naive_utc(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


def iso_time(when: datetime | None) -> str | None:
    """A stored (naive UTC) time as the API shows it."""
    return None if when is None else format_time(when.replace(tzinfo=UTC))


def snapshot_fields(snap: SnapshotRecord, repo: RepositoryInfo) -> dict:
    """The Backup row of a completed snapshot."""
    totals = snap.totals
    file_path, bucket, key = repo.object_path(snap.id)
    created = _naive_utc(snap.time)
    duration = round(snap.duration_s, 3)  # as the snapshot's JSON has it, so a rebuild gives the same row
    return {
        "backup_id": snap.backup_id,
        "app_id": snap.app_id,
        "app_name": snap.app_name,
        "backup_type": snap.backup_type,
        "description": snap.description,
        "size_bytes": totals.bytes,
        "compressed": repo.compressed,
        "encrypted": True,
        "storage_location": repo.storage_location,
        "file_path": file_path,
        "s3_bucket": bucket,
        "s3_key": key,
        "checksum": f"sha256:{snap.id}",
        "status": "completed",
        "created_at": created,
        "completed_at": created + timedelta(seconds=duration),
        "error_message": None,
        "snapshot_id": snap.id,
        "repository": repo.location,
        "parent_snapshot_id": snap.parent,
        "tags": json.dumps(snap.tags),
        "added_bytes": totals.added_bytes,
        "stored_bytes": totals.stored_bytes,
        "files": totals.files,
        "duration_s": duration,
        "hostname": snap.hostname,
    }


def backup_to_dict(row: Backup) -> dict:
    """A Backup row as the API shows it (the epic's fields first)."""
    return {
        "backup_id": row.backup_id,
        "app_id": row.app_id,
        "app_name": row.app_name,
        "backup_type": row.backup_type,
        "description": row.description,
        "size_bytes": row.size_bytes,
        "compressed": row.compressed,
        "encrypted": row.encrypted,
        "storage_location": row.storage_location,
        "file_path": row.file_path,
        "s3_bucket": row.s3_bucket,
        "s3_key": row.s3_key,
        "checksum": row.checksum,
        "status": row.status,
        "created_at": iso_time(row.created_at),
        "completed_at": iso_time(row.completed_at),
        "error_message": row.error_message,
        "snapshot_id": row.snapshot_id,
        "parent_snapshot_id": row.parent_snapshot_id,
        "tags": json.loads(row.tags or "[]"),
        "added_bytes": row.added_bytes,
        "stored_bytes": row.stored_bytes,
        "files": row.files,
        "duration_s": row.duration_s,
        "hostname": row.hostname,
        "job_id": row.job_id,
    }


def job_to_dict(row: Job) -> dict:
    return {
        "job_id": row.job_id,
        "kind": row.kind,
        "app_id": row.app_id,
        "backup_id": row.backup_id,
        "status": row.status,
        "phase": row.phase,
        "progress": {"bytes_done": row.bytes_done, "bytes_total": row.bytes_total},
        "error": row.error,
        "error_code": row.error_code,
        "result": None if row.result is None else json.loads(row.result),
        "created_at": iso_time(row.created_at),
        "started_at": iso_time(row.started_at),
        "finished_at": iso_time(row.finished_at),
    }


class Catalog:
    """Operations on the catalog `database` is bound to (`open_catalog`)."""

    # ---- backups -------------------------------------------------------------------------

    def record_snapshot(self, snap: SnapshotRecord, repo: RepositoryInfo, job_id: str | None = None) -> Backup:
        """Insert or update the row of a completed snapshot (its backup_id is the key)."""
        fields = snapshot_fields(snap, repo)
        fields["job_id"] = job_id
        with database.atomic():
            row = Backup.get_or_none(Backup.backup_id == snap.backup_id)
            if row is None:
                return Backup.create(**fields)
            if job_id is None:
                fields.pop("job_id")
            Backup.update(**fields).where(Backup.backup_id == snap.backup_id).execute()
        return Backup.get_by_id(snap.backup_id)

    def start_backup(
        self, backup_id: str, app_id: str, app_name: str, backup_type: str, repo: RepositoryInfo, **extra: object
    ) -> Backup:
        return Backup.create(
            backup_id=backup_id,
            app_id=app_id,
            app_name=app_name,
            backup_type=backup_type,
            storage_location=repo.storage_location,
            repository=repo.location,
            compressed=repo.compressed,
            status="in_progress",
            **extra,
        )

    def fail_backup(self, backup_id: str, message: str) -> None:
        Backup.update(status="failed", error_message=message, completed_at=utcnow()).where(
            Backup.backup_id == backup_id
        ).execute()

    def get_backup(self, backup_id: str) -> Backup:
        row = Backup.get_or_none(Backup.backup_id == backup_id)
        if row is None:
            raise BackupNotFound(f"no backup {backup_id!r}")
        return row

    def list_backups(
        self, app_id: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Backup], int]:
        """A page of backups, newest first, and how many match in all."""
        if status is not None and status not in BACKUP_STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(BACKUP_STATUSES)}, got {status!r}")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        if offset < 0:
            raise InvalidRequest(f"offset must not be negative, got {offset}")
        query = Backup.select()
        if app_id is not None:
            query = query.where(Backup.app_id == app_id)
        if status is not None:
            query = query.where(Backup.status == status)
        total = query.count()
        rows = list(query.order_by(Backup.created_at.desc(), Backup.backup_id.desc()).limit(limit).offset(offset))
        return rows, total

    def delete_backup(self, backup_id: str) -> None:
        Backup.delete().where(Backup.backup_id == backup_id).execute()

    # ---- jobs ------------------------------------------------------------------------------

    def forget_snapshots(self, snapshot_ids: list[str]) -> list[str]:
        """Delete the records of snapshots retention forgot; returns their backup ids."""
        if not snapshot_ids:
            return []
        rows = Backup.select(Backup.backup_id).where(Backup.snapshot_id.in_(snapshot_ids))
        backup_ids = sorted(r.backup_id for r in rows)
        Backup.delete().where(Backup.snapshot_id.in_(snapshot_ids)).execute()
        return backup_ids

    def create_job(self, kind: str, app_id: str | None = None, backup_id: str | None = None) -> Job:
        if kind not in JOB_KINDS:
            raise InvalidRequest(f"job kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
        return Job.create(job_id=f"job_{secrets.token_hex(8)}", kind=kind, app_id=app_id, backup_id=backup_id)

    def start_job(self, job_id: str) -> None:
        Job.update(status="running", started_at=utcnow()).where(Job.job_id == job_id).execute()

    def job_progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        Job.update(phase=phase, bytes_done=done, bytes_total=total).where(Job.job_id == job_id).execute()

    def finish_job(
        self,
        job_id: str,
        status: str,
        error: str | None = None,
        error_code: str | None = None,
        result: dict | None = None,
        backup_id: str | None = None,
    ) -> None:
        fields: dict = {"status": status, "error": error, "error_code": error_code, "finished_at": utcnow()}
        if result is not None:
            fields["result"] = json.dumps(result)
        if backup_id is not None:
            fields["backup_id"] = backup_id
        Job.update(**fields).where(Job.job_id == job_id).execute()

    def get_job(self, job_id: str) -> Job:
        row = Job.get_or_none(Job.job_id == job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return row

    def interrupt_unfinished(self, reason: str = "the sidecar stopped while it ran") -> int:
        """Mark jobs (and their backups) left queued or running by an earlier process."""
        now = utcnow()
        with database.atomic():
            backups = Backup.update(status="failed", error_message=reason, completed_at=now).where(
                Backup.status.in_(("pending", "in_progress"))
            )
            backups.execute()
            return (
                Job.update(status="interrupted", error=reason, finished_at=now)
                .where(Job.status.in_(("queued", "running")))
                .execute()
            )

    # ---- apps ------------------------------------------------------------------------------

    def note_result(self, app_id: str, app_name: str, backup_id: str | None, error: str | None) -> None:
        now = utcnow()
        fields: dict = {"app_name": app_name, "updated_at": now}
        if error is None:
            fields.update(last_backup_id=backup_id, last_success_at=now)
        else:
            fields.update(last_failure_at=now, last_error=error)
        with database.atomic():
            if AppState.get_or_none(AppState.app_id == app_id) is None:
                AppState.create(app_id=app_id, **fields)
            else:
                AppState.update(**fields).where(AppState.app_id == app_id).execute()

    def newest_completed(self) -> dict[str, tuple[datetime, int]]:
        """app id -> (completion time, size) of its newest completed backup: one query."""
        newest = (
            Backup.select(Backup.app_id, fn.MAX(Backup.created_at).alias("created"))
            .where(Backup.status == "completed")
            .group_by(Backup.app_id)
            .alias("newest")
        )
        query = (
            Backup.select(Backup.app_id, Backup.completed_at, Backup.created_at, Backup.size_bytes)
            .join(newest, on=((Backup.app_id == newest.c.app_id) & (Backup.created_at == newest.c.created)))
            .where(Backup.status == "completed")
        )
        return {row.app_id: ((row.completed_at or row.created_at).replace(tzinfo=UTC), row.size_bytes) for row in query}
