"""`GET /api/v1/backup/openapi.json`: the OpenAPI 3.0 description of every route."""

from __future__ import annotations

from flask import Blueprint, jsonify

from sidecar import __version__
from sidecar.catalog.models import BACKUP_STATUSES, JOB_KINDS, JOB_STATUSES
from sidecar.catalog.schedules import FREQUENCIES
from sidecar.repo.snapshot import BACKUP_TYPES

bp = Blueprint("openapi", __name__)

PREFIX = "/api/v1/backup"

_ERROR_CODES = [
    "BACKUP_NOT_FOUND",
    "APP_NOT_FOUND",
    "JOB_NOT_FOUND",
    "SCHEDULE_NOT_FOUND",
    "INVALID_REQUEST",
    "UNAUTHORIZED",
    "OPERATION_IN_PROGRESS",
    "APP_POLICY_INVALID",
    "BACKUP_CREATE_FAILED",
    "BACKUP_CORRUPTED",
    "RESTORE_FAILED",
    "BACKUP_QUOTA_EXCEEDED",
    "DOCKER_UNAVAILABLE",
    "CATALOG_UNAVAILABLE",
    "INTERNAL_ERROR",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    # the repository's own, when it cannot be read (missing, wrong key, newer format, storage away)
    "REPOSITORY_NOT_FOUND",
    "WRONG_KEY",
    "UNSUPPORTED_FORMAT",
    "STORAGE_UNAVAILABLE",
    "HTTP_ERROR",
]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def _envelope(data: dict) -> dict:
    return {
        "type": "object",
        "required": ["code", "message", "data"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": data},
    }


def _page(item: str) -> dict:
    return {
        "type": "object",
        "required": ["items", "total"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    }


def _response(description: str, data: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _envelope(data)}}}


def _errors(*statuses: int) -> dict:
    """400, 401, the statuses given and 503 (every operation reads the catalog, which may be away)."""
    error = {"description": "error", "content": {"application/json": {"schema": _ref("Error")}}}
    return {str(s): error for s in sorted({400, 401, *statuses, 503})}


def _body(schema: dict, required: bool = False) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_WAIT = _query("wait", {"type": "boolean"}, "block until the job has finished; 200 with the finished record")

_STRING = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "format": "date-time"}

_SCHEDULE_STATUS = {  # what the running scheduler knows of a schedule
    "queued": _BOOL,
    "queued_since": _TIME,
    "running_job_id": _nullable(_STRING),
    "dormant": {"type": "string", "description": "why the schedule does not run now (app gone, label errors, ...)"},
    "last_due": _TIME,
    "last_outcome": _nullable({"type": "string", "enum": ["completed", "retrying", "failed", "skipped"]}),
    "last_job_id": _nullable(_STRING),
    "last_error": _nullable(_STRING),
}

SCHEMAS: dict = {
    "Error": {
        "type": "object",
        "required": ["code", "message", "error"],
        "properties": {
            "code": _INT,
            "message": _STRING,
            "error": {"type": "string", "enum": _ERROR_CODES},
            "data": {"nullable": True},
        },
    },
    "Backup": {
        "type": "object",
        "required": ["backup_id", "app_id", "status", "created_at"],
        "properties": {
            "backup_id": _STRING,
            "app_id": _STRING,
            "app_name": _STRING,
            "backup_type": {"type": "string", "enum": list(BACKUP_TYPES)},
            "description": _nullable(_STRING),
            "size_bytes": _INT,
            "compressed": _BOOL,
            "encrypted": _BOOL,
            "storage_location": _STRING,
            "file_path": _STRING,
            "s3_bucket": _nullable(_STRING),
            "s3_key": _nullable(_STRING),
            "checksum": _STRING,
            "status": {"type": "string", "enum": list(BACKUP_STATUSES)},
            "created_at": _TIME,
            "completed_at": _nullable(_TIME),
            "error_message": _nullable(_STRING),
            "snapshot_id": _nullable(_STRING),
            "parent_snapshot_id": _nullable(_STRING),
            "tags": {"type": "array", "items": _STRING},
            "added_bytes": _INT,
            "stored_bytes": _INT,
            "files": _INT,
            "duration_s": {"type": "number"},
            "hostname": _STRING,
            "job_id": _nullable(_STRING),
            "sources": _nullable({"type": "array", "items": {"type": "object"}}),
            "warnings": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "kind", "status"],
        "properties": {
            "job_id": _STRING,
            "kind": {"type": "string", "enum": list(JOB_KINDS)},
            "app_id": _nullable(_STRING),
            "backup_id": _nullable(_STRING),
            "status": {"type": "string", "enum": list(JOB_STATUSES)},
            "phase": _STRING,
            "progress": {
                "type": "object",
                "properties": {"bytes_done": _INT, "bytes_total": _INT},
            },
            "error": _nullable(_STRING),
            "error_code": _nullable(_STRING),
            "result": _nullable({"type": "object"}),
            "created_at": _TIME,
            "started_at": _nullable(_TIME),
            "finished_at": _nullable(_TIME),
        },
    },
    "App": {
        "type": "object",
        "required": ["app_id", "policy", "errors"],
        "properties": {
            "app_id": _STRING,
            "app_name": _STRING,
            "containers": {"type": "array", "items": {"type": "object"}},
            "volumes": {"type": "array", "items": {"type": "object"}},
            "policy": {"type": "object"},
            "errors": {"type": "array", "items": {"type": "object"}},
            "next_run": _nullable(_TIME),
            "schedules": {"type": "array", "items": _ref("ScheduleStatus")},
            "busy_job_id": _nullable(_STRING),
            "last_backup": _nullable(_ref("Backup")),
            "last_success_at": _nullable(_TIME),
            "last_error": _nullable(_STRING),
        },
    },
    "Schedule": {
        "type": "object",
        "required": ["schedule_id", "app_id", "source", "read_only"],
        "properties": {
            "schedule_id": _STRING,
            "app_id": _STRING,
            "enabled": _BOOL,
            "frequency": {"type": "string", "enum": list(FREQUENCIES)},
            "time": _STRING,
            "day_of_week": _nullable(_INT),
            "day_of_month": _nullable(_INT),
            "cron": _nullable(_STRING),
            "retention_days": _INT,
            "backup_type": _STRING,
            "include_database": _BOOL,
            "include_uploads": _BOOL,
            "storage_location": _STRING,
            "retention": _nullable({"type": "object"}),
            "next_run": _nullable(_TIME),
            "source": {"type": "string", "enum": ["api", "label"]},
            "read_only": _BOOL,
            **_SCHEDULE_STATUS,
        },
    },
    "ScheduleStatus": {
        "type": "object",
        "required": ["schedule_id", "source", "next_run"],
        "properties": {
            "schedule_id": _STRING,
            "source": {"type": "string", "enum": ["api", "label"]},
            "next_run": _nullable(_TIME),
            **_SCHEDULE_STATUS,
        },
    },
    "ScheduleInput": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "app_id": _STRING,
            "enabled": _BOOL,
            "frequency": {"type": "string", "enum": list(FREQUENCIES)},
            "time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
            "day_of_week": {"type": "integer", "minimum": 0, "maximum": 6},
            "day_of_month": {"type": "integer", "minimum": 1, "maximum": 31},
            "cron": _STRING,
            "retention_days": {"type": "integer", "minimum": 1, "maximum": 36500},
            "backup_type": {"type": "string", "enum": list(BACKUP_TYPES)},
            "include_database": _BOOL,
            "include_uploads": _BOOL,
            "storage_location": _STRING,
        },
    },
}


def spec() -> dict:
    backup_id = _path_param("backup_id")
    app_id = _path_param("app_id")
    paths = {
        "/healthz": {
            "get": {
                "summary": "liveness (no key)",
                "security": [],
                "responses": {"200": _response("alive", {"type": "object"})},
            }
        },
        f"{PREFIX}/snapshots": {
            "get": {
                "summary": "list backups, newest first",
                "parameters": [
                    _query("app_id", _STRING),
                    _query("status", {"type": "string", "enum": list(BACKUP_STATUSES)}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
                    _query("offset", {"type": "integer", "minimum": 0, "default": 0}),
                ],
                "responses": {"200": _response("a page of backups", _page("Backup")), **_errors()},
            }
        },
        f"{PREFIX}/snapshots/{{backup_id}}": {
            "parameters": [backup_id],
            "get": {
                "summary": "one backup with its sources and stats",
                "responses": {"200": _response("the backup", _ref("Backup")), **_errors(404, 500)},  # 500: as export
            },
            "delete": {
                "summary": "forget a backup (its data is freed by the next prune)",
                "responses": {"200": _response("deleted", {"type": "object"}), **_errors(404, 409, 500)},
            },
        },
        f"{PREFIX}/snapshots/{{backup_id}}/verify": {
            "parameters": [backup_id],
            "post": {
                "summary": "read and check all data of a backup (decrypt + re-hash), as a job",
                "parameters": [_WAIT],
                "responses": {
                    "200": _response("verified", _ref("Job")),
                    "202": _response("started", _ref("Job")),
                    **_errors(404, 409, 413, 500),
                },
            },
        },
        f"{PREFIX}/snapshots/{{backup_id}}/export": {
            "parameters": [backup_id],
            "get": {
                "summary": "the backup as a portable pax tar stream",
                "responses": {
                    "200": {
                        "description": "tar",
                        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_errors(404, 500),  # 500: the repository cannot be read (damaged, wrong key)
                },
            },
        },
        f"{PREFIX}/{{app_id}}": {
            "parameters": [app_id],
            "post": {
                "summary": "back up an app now, as a job",
                "parameters": [_WAIT],
                "requestBody": _body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "backup_type": {"type": "string", "enum": list(BACKUP_TYPES)},
                            "description": _STRING,
                            "storage_location": _STRING,
                            "include_database": _BOOL,
                        },
                    }
                ),
                "responses": {
                    "200": _response("finished (wait=true)", _ref("Backup")),
                    "202": _response("started: the record with status in_progress and job_id", _ref("Backup")),
                    **_errors(404, 409, 413, 500, 503, 507),
                },
            },
        },
        f"{PREFIX}/restore/{{app_id}}/{{backup_id}}": {
            "parameters": [app_id, backup_id],
            "post": {
                "summary": "restore an app to a backup (safety snapshot first, rollback on failure), as a job",
                "parameters": [_WAIT],
                "requestBody": _body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "stop_app": _BOOL,
                            "restore_database": _BOOL,
                            "volumes": {"type": "array", "items": _STRING},
                            "safety_snapshot": _BOOL,
                            "verify_data": _BOOL,
                        },
                    }
                ),
                "responses": {
                    "200": _response("finished (wait=true)", _ref("Job")),
                    "202": _response("started", _ref("Job")),
                    **_errors(404, 409, 413, 500, 503),
                },
            },
        },
        f"{PREFIX}/jobs/{{job_id}}": {
            "parameters": [_path_param("job_id")],
            "get": {
                "summary": "a job's status and progress",
                "responses": {"200": _response("the job", _ref("Job")), **_errors(404)},
            },
        },
        f"{PREFIX}/apps": {
            "get": {
                "summary": "discovered apps: policy from labels, label errors, next run, last result",
                "responses": {"200": _response("apps", _page("App")), **_errors(503)},
            }
        },
        f"{PREFIX}/schedules": {
            "get": {
                "summary": "API-managed schedules and, read-only, label schedules",
                "parameters": [_query("app_id", _STRING)],
                "responses": {"200": _response("schedules", _page("Schedule")), **_errors()},
            },
            "post": {
                "summary": "create a schedule",
                "requestBody": _body(_ref("ScheduleInput"), required=True),
                "responses": {"201": _response("created", _ref("Schedule")), **_errors(413)},
            },
        },
        f"{PREFIX}/schedules/{{schedule_id}}": {
            "parameters": [_path_param("schedule_id")],
            "get": {
                "summary": "one schedule",
                "responses": {"200": _response("the schedule", _ref("Schedule")), **_errors(404)},
            },
            "put": {
                "summary": "change a schedule (the fields given)",
                "requestBody": _body(_ref("ScheduleInput"), required=True),
                "responses": {"200": _response("changed", _ref("Schedule")), **_errors(404, 413)},
            },
            "delete": {
                "summary": "delete a schedule",
                "responses": {"200": _response("deleted", {"type": "object"}), **_errors(404)},
            },
        },
        f"{PREFIX}/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.0",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": _errors()["401"],
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "websoft9-backup", "version": __version__},
        "security": [{"ApiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": SCHEMAS,
        },
    }


@bp.get("/openapi.json")
def openapi_json():  # type: ignore[no-untyped-def]
    return jsonify(spec())
