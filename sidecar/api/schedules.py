"""Schedules: the API-managed ones (create, change, delete) and, read-only, the
apps' `websoft9.backup.schedule` labels."""

from __future__ import annotations

from flask import Blueprint, request

from sidecar.api.context import operations
from sidecar.api.envelope import ok
from sidecar.api.validation import Body
from sidecar.catalog import schedules
from sidecar.errors import DockerUnavailable, InvalidRequest
from sidecar.repo.snapshot import BACKUP_TYPES

bp = Blueprint("schedules", __name__)


def _fields(body: Body, current: schedules.ScheduleFields | None = None) -> schedules.ScheduleFields:
    base = current or schedules.ScheduleFields(app_id="")
    fields = schedules.ScheduleFields(
        app_id=body.string("app_id", base.app_id, 255) or "",
        enabled=body.boolean("enabled", base.enabled),
        frequency=body.choice("frequency", schedules.FREQUENCIES, base.frequency) or base.frequency,
        time=body.string("time", base.time, 5) or base.time,
        day_of_week=body.integer("day_of_week", base.day_of_week, 0, 6),
        day_of_month=body.integer("day_of_month", base.day_of_month, 1, 31),
        cron=_one_spaced(body.string("cron", base.cron, 255)),
        retention_days=body.integer("retention_days", base.retention_days, 1, 36500) or base.retention_days,
        backup_type=body.choice("backup_type", BACKUP_TYPES, base.backup_type) or base.backup_type,
        include_database=body.boolean("include_database", base.include_database),
        include_uploads=body.boolean("include_uploads", base.include_uploads),
        storage_location=body.string("storage_location", base.storage_location, 64) or base.storage_location,
    )
    if not fields.time.isascii():  # the catalog's check (\d) takes any script's digits: 0३:00
        raise InvalidRequest(f"time: must be HH:MM (00:00 to 23:59), got {fields.time!r}")
    body.done()
    storage = operations().repo_info.storage_location
    if fields.storage_location != storage:
        raise InvalidRequest(f"storage_location: this sidecar stores into {storage!r}, not {fields.storage_location!r}")
    return fields


def _one_spaced(cron: str | None) -> str | None:
    """A cron expression as checked and as the scheduler reads it: " @daily" or "0 3 * * * " (which the
    check accepts) would otherwise be stored as sent, and never run."""
    return None if cron is None else " ".join(cron.split())


def _label_schedules(app_id: str | None) -> list[dict]:
    ops = operations()
    try:
        apps = ops.apps()
    except DockerUnavailable:
        return []
    out = []
    for app in apps:
        schedule = app["policy"].get("schedule")
        if not schedule or (app_id and app["app_id"] != app_id):
            continue
        key = f"label:{app['app_id']}"
        status = next((s for s in app["schedules"] if s["schedule_id"] == key), {})
        out.append(
            {
                **status,
                "schedule_id": key,
                "app_id": app["app_id"],
                "enabled": not app["errors"],
                "frequency": "cron",
                "cron": schedule,
                "backup_type": app["policy"].get("backup_type"),
                "retention": app["policy"].get("retention"),
                "source": "label",
                "read_only": True,
            }
        )
    return out


def _with_status(row) -> dict:  # type: ignore[no-untyped-def]
    """An API schedule with its next run (and queue state and last outcome, from the scheduler)."""
    from sidecar.jobs.timing import timing_of_fields

    fields = (row.frequency, row.time, row.day_of_week, row.day_of_month, row.cron)
    timing = (lambda: timing_of_fields(*fields)) if row.enabled else None
    return {**schedules.schedule_to_dict(row), **operations().schedule_status(row.schedule_id, timing)}


def _changed() -> None:
    scheduler = operations().scheduler
    if scheduler is not None:
        scheduler.wake()


def _read_only(schedule_id: str) -> None:
    if schedule_id.startswith("label:"):
        raise InvalidRequest(
            f"schedule {schedule_id} comes from the app's websoft9.backup.schedule label: change the label"
        )


@bp.get("/schedules")
def list_schedules():  # type: ignore[no-untyped-def]
    app_id = request.args.get("app_id") or None
    items = []
    for row in schedules.list_schedules(app_id):
        items.append(_with_status(row))
    items += _label_schedules(app_id)
    return ok({"items": items, "total": len(items)})


@bp.post("/schedules")
def create_schedule():  # type: ignore[no-untyped-def]
    row = schedules.create_schedule(_fields(Body(request)))
    _changed()
    return ok(_with_status(row), "Schedule created", 201)


@bp.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str):  # type: ignore[no-untyped-def]
    if schedule_id.startswith("label:"):
        found = [s for s in _label_schedules(schedule_id[6:]) if s["schedule_id"] == schedule_id]
        if not found:
            raise schedules.ScheduleNotFound(f"no schedule {schedule_id!r}")
        return ok(found[0])
    return ok(_with_status(schedules.get_schedule(schedule_id)))


@bp.put("/schedules/<schedule_id>")
def update_schedule(schedule_id: str):  # type: ignore[no-untyped-def]
    _read_only(schedule_id)
    current = schedules.fields_of(schedules.get_schedule(schedule_id))
    row = schedules.update_schedule(schedule_id, _fields(Body(request), current))
    _changed()
    return ok(_with_status(row), "Schedule updated")


@bp.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str):  # type: ignore[no-untyped-def]
    _read_only(schedule_id)
    schedules.delete_schedule(schedule_id)
    _changed()
    return ok({"schedule_id": schedule_id}, "Schedule deleted")
