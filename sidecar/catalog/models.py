"""Catalog tables (peewee). The epic's `Backup` and `BackupSchedule` with all their
fields, plus jobs and per-app state. Bound at run time to SQLite or PostgreSQL
through `database` (a `DatabaseProxy`), see `sidecar.catalog.db`.

The repository is the truth for completed backups; these rows are what the API
lists and filters quickly, and `catalog rebuild` re-creates them from it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    FloatField,
    IntegerField,
    Model,
    TextField,
)

database = DatabaseProxy()

BACKUP_STATUSES = ("pending", "in_progress", "completed", "failed")
JOB_STATUSES = ("queued", "running", "completed", "failed", "interrupted")
JOB_KINDS = ("backup", "restore", "verify", "prune", "check")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, always UTC


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Backup(BaseModel):
    """The epic's Backup record; one per repository snapshot (plus failed attempts)."""

    backup_id = CharField(primary_key=True, max_length=64)
    app_id = CharField(max_length=255, index=True)
    app_name = CharField(max_length=255)
    backup_type = CharField(max_length=16)
    description = TextField(null=True)
    size_bytes = BigIntegerField(default=0)  # logical size of what was backed up
    compressed = BooleanField(default=True)
    encrypted = BooleanField(default=True)
    storage_location = CharField(max_length=64, default="local")  # repository name: local, s3, ...
    file_path = TextField(default="")  # the snapshot object: <repository>/snapshots/<id>
    s3_bucket = CharField(max_length=255, null=True)
    s3_key = TextField(null=True)
    checksum = CharField(max_length=80, default="")  # sha256:<snapshot id> (the object's name is its hash)
    status = CharField(max_length=16, default="pending", index=True)
    created_at = DateTimeField(default=utcnow, index=True)
    completed_at = DateTimeField(null=True)
    error_message = TextField(null=True)
    # beyond the epic's fields
    snapshot_id = CharField(max_length=64, null=True, unique=True)
    repository = TextField(default="")  # location of the repository holding it
    parent_snapshot_id = CharField(max_length=64, null=True)
    tags = TextField(default="[]")  # JSON list
    added_bytes = BigIntegerField(default=0)
    stored_bytes = BigIntegerField(default=0)
    files = BigIntegerField(default=0)
    duration_s = FloatField(default=0.0)
    hostname = CharField(max_length=255, default="")
    job_id = CharField(max_length=64, null=True)

    class Meta:
        # listing an app's backups; and each app's newest completed one (metrics, a covering index)
        indexes = ((("app_id", "created_at"), False), (("status", "app_id", "created_at"), False))


class BackupSchedule(BaseModel):
    """The epic's BackupSchedule (API-managed; label schedules are not stored)."""

    schedule_id = CharField(primary_key=True, max_length=64)
    app_id = CharField(max_length=255, index=True)
    enabled = BooleanField(default=True)
    frequency = CharField(max_length=16)  # daily, weekly, monthly, cron
    time = CharField(max_length=5, default="03:00")  # HH:MM
    day_of_week = IntegerField(null=True)  # 0-6 (Sunday-Saturday)
    day_of_month = IntegerField(null=True)  # 1-31
    cron = CharField(max_length=255, null=True)  # with frequency "cron"
    retention_days = IntegerField(default=30)
    backup_type = CharField(max_length=16, default="full")
    include_database = BooleanField(default=True)
    include_uploads = BooleanField(default=True)
    storage_location = CharField(max_length=64, default="local")
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)


class Job(BaseModel):
    """A backup, restore, verify or prune run, with its progress."""

    job_id = CharField(primary_key=True, max_length=64)
    kind = CharField(max_length=16)
    app_id = CharField(max_length=255, null=True, index=True)
    backup_id = CharField(max_length=64, null=True)
    phase = CharField(max_length=64, default="")
    bytes_done = BigIntegerField(default=0)
    bytes_total = BigIntegerField(default=0)
    status = CharField(max_length=16, default="queued", index=True)
    error = TextField(null=True)
    error_code = CharField(max_length=64, null=True)
    result = TextField(null=True)  # JSON of the finished operation
    created_at = DateTimeField(default=utcnow)
    started_at = DateTimeField(null=True)
    finished_at = DateTimeField(null=True)


class AppState(BaseModel):
    """What the sidecar remembers of an app between restarts."""

    app_id = CharField(primary_key=True, max_length=255)
    app_name = CharField(max_length=255, default="")
    last_backup_id = CharField(max_length=64, null=True)
    last_success_at = DateTimeField(null=True)
    last_failure_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    updated_at = DateTimeField(default=utcnow)


class ScheduleState(BaseModel):
    """What the scheduler remembers of each schedule between restarts: the due time it
    last handled (ran, queued or skipped), so runs missed while it was down are found."""

    schedule_key = CharField(primary_key=True, max_length=128)  # label:<app>, sch_..., prune
    app_id = CharField(max_length=255, null=True)
    timing = CharField(max_length=255)  # the schedule as text; a change restarts the reckoning
    last_due_at = DateTimeField()  # UTC
    last_job_id = CharField(max_length=64, null=True)
    last_outcome = CharField(max_length=16, null=True)  # completed, failed, skipped
    last_error = TextField(null=True)
    updated_at = DateTimeField(default=utcnow)


class SchemaVersion(BaseModel):
    version = IntegerField()
    applied_at = DateTimeField(default=utcnow)


TABLES = [Backup, BackupSchedule, Job, AppState, ScheduleState, SchemaVersion]
