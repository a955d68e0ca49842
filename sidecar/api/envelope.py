"""The response envelope of DESIGN.md §5: `{"code", "message", "data"}`, errors with
`"error": CODE`. Every error, expected or not, leaves as such an envelope; an
unexpected one is logged (type and place, not its arguments) and answered with
a generic message, so nothing internal reaches the client."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from peewee import InterfaceError, OperationalError, PeeweeException
from werkzeug.exceptions import HTTPException

from sidecar.errors import BackupError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "INVALID_REQUEST",
    415: "INVALID_REQUEST",
}


def ok(data: object = None, message: str = "ok", status: int = 200) -> tuple[Response, int]:
    return jsonify({"code": status, "message": message, "data": data}), status


def error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"code": status, "message": message, "error": code, "data": None}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BackupError)
    def _backup_error(exc: BackupError) -> tuple[Response, int]:
        return error(exc.http_status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        return error(status, _HTTP_CODES.get(status, "HTTP_ERROR"), exc.description or exc.name)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _catalog_error(exc: PeeweeException) -> tuple[Response, int]:  # the database is away or refuses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.error("catalog: %s", first)
        return error(503, "CATALOG_UNAVAILABLE", f"the catalog is unavailable: {first}")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
        log.error("unexpected %s at %s", type(exc).__name__, where)
        return error(500, "INTERNAL_ERROR", f"internal error ({type(exc).__name__}); see the sidecar's log")
