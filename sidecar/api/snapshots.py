"""Backups: list, one (with its sources), create, delete, verify, export."""

from __future__ import annotations

from flask import Blueprint, Response, request, stream_with_context

from sidecar.api.context import operations, wait_for
from sidecar.api.envelope import ok
from sidecar.api.validation import Body, query_flag, query_int
from sidecar.catalog.models import BACKUP_STATUSES
from sidecar.catalog.records import MAX_PAGE, backup_to_dict, job_to_dict
from sidecar.errors import InvalidRequest
from sidecar.operations import BackupRequest
from sidecar.repo.snapshot import BACKUP_TYPES

bp = Blueprint("snapshots", __name__)


@bp.get("/snapshots")
def list_backups():  # type: ignore[no-untyped-def]
    status = request.args.get("status") or None
    if status is not None and status not in BACKUP_STATUSES:  # the catalog checks too, its message without "status:"
        raise InvalidRequest(f"status: must be one of {', '.join(BACKUP_STATUSES)}, got {status!r}")
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    offset = query_int(request, "offset", 0, 0, 2**31)
    rows, total = operations().catalog.list_backups(request.args.get("app_id") or None, status, limit, offset)
    return ok({"items": [backup_to_dict(r) for r in rows], "total": total, "limit": limit, "offset": offset})


@bp.get("/snapshots/<backup_id>")
def get_backup(backup_id: str):  # type: ignore[no-untyped-def]
    return ok(operations().backup_detail(backup_id))


@bp.delete("/snapshots/<backup_id>")
def delete_backup(backup_id: str):  # type: ignore[no-untyped-def]
    operations().delete_backup(backup_id)
    return ok({"backup_id": backup_id}, "Backup deleted; its data is freed by the next prune")


@bp.post("/snapshots/<backup_id>/verify")
def verify_backup(backup_id: str):  # type: ignore[no-untyped-def]
    wait = query_flag(request, "wait")
    Body(request).done()
    ops = operations()
    job_id = ops.start_verify(backup_id)
    if wait:
        return ok(job_to_dict(wait_for(job_id)), "Backup verified")
    return ok(job_to_dict(ops.catalog.get_job(job_id)), "Verification started", 202)


@bp.get("/snapshots/<backup_id>/export")
def export_backup(backup_id: str):  # type: ignore[no-untyped-def]
    chunks = operations().export(backup_id)
    return Response(
        stream_with_context(chunks),
        mimetype="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{backup_id}.tar"'},
    )


@bp.post("/<app_id>")
def create_backup(app_id: str):  # type: ignore[no-untyped-def]
    wait = query_flag(request, "wait")
    body = Body(request)
    ops = operations()
    req = BackupRequest(
        backup_type=body.choice("backup_type", BACKUP_TYPES),
        description=body.string("description"),
        include_database=body.boolean("include_database", True),
    )
    storage = body.string("storage_location")
    body.done()
    if storage is not None and storage != ops.repo_info.storage_location:
        raise InvalidRequest(
            f"storage_location: this sidecar stores into {ops.repo_info.storage_location!r}, not {storage!r}"
        )
    job_id, row = ops.start_backup(app_id, req)
    if wait:
        wait_for(job_id)
        return ok(backup_to_dict(ops.catalog.get_backup(row.backup_id)), "Backup created successfully")
    return ok({**backup_to_dict(row), "job_id": job_id}, "Backup started", 202)
