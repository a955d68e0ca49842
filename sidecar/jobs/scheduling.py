"""The scheduler's wiring: its settings from the environment, the schedules it reads
(app labels from the registry, API schedules from the catalog), and how it starts
work (through `Operations`, like the API)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING

from sidecar.config import env_int
from sidecar.errors import BackupError, InvalidRequest
from sidecar.jobs.scheduler import Done, Outcome, Planned, Run, SchedulerConfig
from sidecar.jobs.timing import timing_of_fields, timing_of_label, zone
from sidecar.labels import parse_duration
from sidecar.repo.retention import RetentionPolicy

if TYPE_CHECKING:
    from sidecar.docker.apps import App, Registry
    from sidecar.operations import Operations

log = logging.getLogger(__name__)

_OFF = ("", "off", "none", "never", "false")


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
    if value < 0:
        raise InvalidRequest(f"{name}: must not be negative, got {text!r}")
    return value


def config_from_env(env: Mapping[str, str] = os.environ) -> SchedulerConfig:
    """TZ, BACKUP_MAX_CONCURRENT_BACKUPS, BACKUP_SCHEDULER_JITTER, BACKUP_SCHEDULER_CATCH_UP,
    BACKUP_SCHEDULER_RETRIES, BACKUP_SCHEDULER_RETRY_BACKOFF, BACKUP_PRUNE_SCHEDULE,
    BACKUP_RETENTION; a bad value is an InvalidRequest naming the variable."""
    from sidecar.jobs.timing import CronTiming

    prune = env.get("BACKUP_PRUNE_SCHEDULE")
    prune_schedule: str | None = "0 4 * * 0"
    if prune is not None:
        prune_schedule = None if prune.strip().lower() in _OFF else " ".join(prune.split())
    if prune_schedule:
        try:
            CronTiming(prune_schedule)
        except InvalidRequest as exc:
            raise InvalidRequest(f"BACKUP_PRUNE_SCHEDULE: {exc.message}") from None
    retention = RetentionPolicy(days=30)
    if (env.get("BACKUP_RETENTION") or "").strip():
        try:
            retention = RetentionPolicy.parse(env["BACKUP_RETENTION"])
        except InvalidRequest as exc:
            raise InvalidRequest(f"BACKUP_RETENTION: {exc.message}") from None
    try:
        tz = zone(env.get("TZ"))
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message) from None
    return SchedulerConfig(
        tz=tz,
        max_concurrent=env_int(env, "BACKUP_MAX_CONCURRENT_BACKUPS", 2, 1, 64),
        jitter_s=_duration(env, "BACKUP_SCHEDULER_JITTER", 0.0),
        catch_up_s=_duration(env, "BACKUP_SCHEDULER_CATCH_UP", 6 * 3600.0),
        retries=env_int(env, "BACKUP_SCHEDULER_RETRIES", 2, 0, 10),
        retry_backoff_s=_duration(env, "BACKUP_SCHEDULER_RETRY_BACKOFF", 60.0),
        prune_schedule=prune_schedule,
        default_retention=retention,
    )


# ---- the schedules ---------------------------------------------------------------------------------


def _label_retention(app: App, default: RetentionPolicy) -> RetentionPolicy:
    if app.policy.retention is None:
        return default
    return RetentionPolicy(**app.policy.retention.to_dict())


def _schedulable(app: App | None) -> str | None:
    """Why the app's schedules cannot run now, or None."""
    from sidecar.jobs.backup import explicitly_disabled

    if app is None:
        return "the app is not on this Docker host (its schedule waits for it)"
    if app.policy.errors:
        return "the app's labels have errors: " + "; ".join(str(e) for e in app.policy.errors)
    if explicitly_disabled(app):
        return "the app has backups disabled (websoft9.backup.enable=false)"
    return None


@dataclass
class ScheduleSources:
    registry: Registry | None
    config: SchedulerConfig

    def __call__(self) -> tuple[list[Planned], dict[str, str]]:
        from sidecar.catalog.models import BackupSchedule

        apps = {a.app_id: a for a in self.registry.apps()} if self.registry is not None else {}
        plans: list[Planned] = []
        dormant: dict[str, str] = {}
        for app in apps.values():
            if not app.policy.schedule:
                continue
            key = f"label:{app.app_id}"
            why = _schedulable(app) or (None if app.policy.enabled else "backups are not enabled")
            if why is not None:
                dormant[key] = why
                continue
            plans.append(
                Planned(
                    key=key,
                    app_id=app.app_id,
                    source="label",
                    timing=timing_of_label(app.policy.schedule),
                    retention=_label_retention(app, self.config.default_retention),
                )
            )
        for row in BackupSchedule.select().order_by(BackupSchedule.schedule_id):
            if not row.enabled:
                dormant[row.schedule_id] = "disabled"
                continue
            why = _schedulable(apps.get(row.app_id))
            if why is not None:
                dormant[row.schedule_id] = why
                continue
            try:
                timing = timing_of_fields(row.frequency, row.time, row.day_of_week, row.day_of_month, row.cron)
            except (InvalidRequest, ValueError) as exc:
                dormant[row.schedule_id] = f"its timing is not valid: {exc}"
                continue
            plans.append(
                Planned(
                    key=row.schedule_id,
                    app_id=row.app_id,
                    source="api",
                    timing=timing,
                    retention=RetentionPolicy(days=row.retention_days),
                    backup_type=row.backup_type,
                    include_database=row.include_database,
                    include_volumes=row.include_uploads,
                    baseline=row.updated_at.replace(tzinfo=UTC),
                )
            )
        return plans, dormant


# ---- starting work ---------------------------------------------------------------------------------


@dataclass
class OperationsLauncher:
    ops: Operations

    def active_jobs(self) -> int:
        return self.ops.runner.active()

    def app_busy(self, app_id: str) -> bool:
        return self.ops.runner.busy(app_id) is not None

    def start_backup(self, run: Run, final_attempt: bool, done: Done) -> str:
        from sidecar.operations import BackupRequest

        plan = run.plan
        request = BackupRequest(
            backup_type=plan.backup_type,
            include_database=plan.include_database,
            include_volumes=plan.include_volumes,
            tags=["scheduled"],
            description=f"scheduled ({plan.key})",
            retention=plan.retention,
        )
        job_id, _ = self.ops.start_backup(plan.app_id, request, on_finish=_relay(done), final_attempt=final_attempt)
        return job_id

    def start_prune(self, done: Done) -> str:
        return self.ops.start_prune(on_finish=_relay(done))


def _relay(done: Done):  # type: ignore[no-untyped-def]
    def on_finish(job_id: str, result: dict | None, error: BackupError | None) -> None:
        done(Outcome(error is None, result, error))

    return on_finish
