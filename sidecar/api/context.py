"""What the blueprints share: the operations object and job waiting."""

from __future__ import annotations

from flask import current_app

from sidecar import errors
from sidecar.catalog.models import Job
from sidecar.operations import Operations


def operations() -> Operations:
    return current_app.config["OPERATIONS"]


def _status_of(code: str | None) -> int:
    for cls in _error_classes(errors.BackupError):
        if cls.code == code:
            return cls.http_status
    return 500


def _error_classes(base: type) -> list[type]:
    out = [base]
    for sub in base.__subclasses__():
        out += _error_classes(sub)
    return out


def wait_for(job_id: str) -> Job:
    """Block until the job has finished; raises its error (code and status kept) if it failed."""
    ops = operations()
    ops.runner.wait(job_id, current_app.config["WAIT_TIMEOUT"])
    job = ops.catalog.get_job(job_id)
    if job.status in ("failed", "interrupted"):
        exc = errors.BackupError(job.error or f"job {job_id} {job.status}")
        exc.code = job.error_code or "INTERNAL_ERROR"
        exc.http_status = _status_of(job.error_code)
        raise exc
    return job
