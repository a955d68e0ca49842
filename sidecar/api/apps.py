"""Discovered apps with their policy, label errors, next run and last result."""

from __future__ import annotations

from flask import Blueprint

from sidecar.api.context import operations
from sidecar.api.envelope import ok

bp = Blueprint("apps", __name__)


@bp.get("/apps")
def list_apps():  # type: ignore[no-untyped-def]
    items = operations().apps()
    return ok({"items": items, "total": len(items)})
