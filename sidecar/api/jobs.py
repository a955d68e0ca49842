"""Jobs (progress of backups, restores, verifications) and restores, which start one."""

from __future__ import annotations

from flask import Blueprint, request

from sidecar.api.context import operations, wait_for
from sidecar.api.envelope import ok
from sidecar.api.validation import Body, query_flag
from sidecar.catalog.records import job_to_dict
from sidecar.operations import RestoreRequest

bp = Blueprint("jobs", __name__)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):  # type: ignore[no-untyped-def]
    return ok(job_to_dict(operations().catalog.get_job(job_id)))


@bp.post("/restore/<app_id>/<backup_id>")
def restore(app_id: str, backup_id: str):  # type: ignore[no-untyped-def]
    wait = query_flag(request, "wait")
    body = Body(request)
    req = RestoreRequest(
        stop_app=body.boolean("stop_app", True),
        restore_database=body.boolean("restore_database", True),
        volumes=body.strings("volumes"),
        safety=body.boolean("safety_snapshot", True),
        verify_data=body.boolean("verify_data", False),
    )
    body.done()
    ops = operations()
    job_id = ops.start_restore(app_id, backup_id, req)
    if wait:
        return ok(job_to_dict(wait_for(job_id)), "Restore completed")
    return ok(job_to_dict(ops.catalog.get_job(job_id)), "Restore started", 202)
