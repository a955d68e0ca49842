"""API-managed schedules (the epic's BackupSchedule): checked, stored, listed with
the label schedules of the apps (those are read-only here: labels own them)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from sidecar.catalog.models import BackupSchedule, utcnow
from sidecar.errors import BackupNotFound, InvalidRequest
from sidecar.repo.snapshot import BACKUP_TYPES

FREQUENCIES = ("daily", "weekly", "monthly", "cron")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class ScheduleNotFound(BackupNotFound):
    code = "SCHEDULE_NOT_FOUND"


@dataclass
class ScheduleFields:
    app_id: str
    enabled: bool = True
    frequency: str = "daily"
    time: str = "03:00"
    day_of_week: int | None = None
    day_of_month: int | None = None
    cron: str | None = None
    retention_days: int = 30
    backup_type: str = "full"
    include_database: bool = True
    include_uploads: bool = True
    storage_location: str = "local"

    def check(self) -> None:
        """InvalidRequest naming the first field that is wrong or missing for the frequency."""
        if not self.app_id:
            raise InvalidRequest("app_id: must not be empty")
        if self.frequency not in FREQUENCIES:
            raise InvalidRequest(f"frequency: must be one of {', '.join(FREQUENCIES)}, got {self.frequency!r}")
        if self.frequency == "cron":
            from sidecar.jobs.timing import CronTiming

            try:
                CronTiming(" ".join((self.cron or "").split()))
            except InvalidRequest:
                raise InvalidRequest(
                    "cron: a valid cron expression (5 fields, or @hourly, @daily, @weekly, @monthly, @yearly) "
                    f"is needed with frequency cron, got {self.cron!r}"
                ) from None
        elif self.cron is not None:
            raise InvalidRequest("cron: only with frequency cron")
        if not _TIME.match(self.time or ""):
            raise InvalidRequest(f"time: must be HH:MM (00:00 to 23:59), got {self.time!r}")
        if self.frequency == "weekly" and self.day_of_week is None:
            raise InvalidRequest("day_of_week: needed with frequency weekly (0-6, Sunday-Saturday)")
        if self.frequency == "monthly" and self.day_of_month is None:
            raise InvalidRequest("day_of_month: needed with frequency monthly (1-31)")
        if not (self.include_database or self.include_uploads):
            raise InvalidRequest("include_database, include_uploads: at least one must be true")
        if self.backup_type not in BACKUP_TYPES:
            raise InvalidRequest(f"backup_type: must be one of {', '.join(BACKUP_TYPES)}, got {self.backup_type!r}")


def schedule_to_dict(row: BackupSchedule) -> dict:
    return {
        "schedule_id": row.schedule_id,
        "app_id": row.app_id,
        "enabled": row.enabled,
        "frequency": row.frequency,
        "time": row.time,
        "day_of_week": row.day_of_week,
        "day_of_month": row.day_of_month,
        "cron": row.cron,
        "retention_days": row.retention_days,
        "backup_type": row.backup_type,
        "include_database": row.include_database,
        "include_uploads": row.include_uploads,
        "storage_location": row.storage_location,
        "source": "api",
        "read_only": False,
    }


def fields_of(row: BackupSchedule) -> ScheduleFields:
    return ScheduleFields(**{k: getattr(row, k) for k in ScheduleFields.__dataclass_fields__})


def create_schedule(fields: ScheduleFields) -> BackupSchedule:
    fields.check()
    return BackupSchedule.create(schedule_id=f"sch_{secrets.token_hex(6)}", **fields.__dict__)


def get_schedule(schedule_id: str) -> BackupSchedule:
    row = BackupSchedule.get_or_none(BackupSchedule.schedule_id == schedule_id)
    if row is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r}")
    return row


def update_schedule(schedule_id: str, fields: ScheduleFields) -> BackupSchedule:
    get_schedule(schedule_id)
    fields.check()
    BackupSchedule.update(updated_at=utcnow(), **fields.__dict__).where(
        BackupSchedule.schedule_id == schedule_id
    ).execute()
    return get_schedule(schedule_id)


def delete_schedule(schedule_id: str) -> None:
    get_schedule(schedule_id)
    BackupSchedule.delete().where(BackupSchedule.schedule_id == schedule_id).execute()


def list_schedules(app_id: str | None = None) -> list[BackupSchedule]:
    query = BackupSchedule.select().order_by(BackupSchedule.app_id, BackupSchedule.created_at)
    if app_id:
        query = query.where(BackupSchedule.app_id == app_id)
    return list(query)
