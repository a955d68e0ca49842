"""The REST API of DESIGN.md §5: `create_app(operations, api_key)`.

Every `/api/*` request needs `X-API-Key` (checked before routing, so even an
unknown `/api/` path answers 401 to a caller without the key); `/healthz` and
`/metrics` do not. Without a key the app is refused unless `insecure_no_auth`
is asked for (local use only)."""

from __future__ import annotations

import hmac

from flask import Flask, request

from sidecar.api import apps, jobs, openapi, schedules, snapshots
from sidecar.api.envelope import error, ok, register_error_handlers
from sidecar.errors import InvalidRequest
from sidecar.operations import Operations

PREFIX = "/api/v1/backup"
MAX_BODY = 1 << 20


def create_app(
    operations: Operations,
    api_key: str | None,
    *,
    insecure_no_auth: bool = False,
    wait_timeout: float = 6 * 3600,
) -> Flask:
    if not api_key and not insecure_no_auth:
        raise InvalidRequest(
            "BACKUP_API_KEY is not set: the API does not start without a key (--insecure-no-auth for local use only)"
        )
    app = Flask("websoft9-backup")
    # no HTML redirects from an API: "a//b" (an id with an encoded "/") and a trailing "/" are routed
    # as they are, to the JSON 404 or the route itself
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config.update(OPERATIONS=operations, WAIT_TIMEOUT=wait_timeout, MAX_CONTENT_LENGTH=MAX_BODY)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    register_error_handlers(app)
    expected = api_key.encode() if api_key else None

    @app.before_request
    def _authenticate():  # type: ignore[no-untyped-def]
        if expected is None or not request.path.startswith("/api/"):
            return None
        given = request.headers.get("X-API-Key", "").encode("utf-8", "surrogateescape")
        if not given:
            return error(401, "UNAUTHORIZED", "X-API-Key header missing")
        if not hmac.compare_digest(given, expected):
            return error(401, "UNAUTHORIZED", "X-API-Key is wrong")
        return None

    @app.before_request
    def _no_nul():  # type: ignore[no-untyped-def]
        """PostgreSQL refuses NUL in text: a 400 naming the parameter, not a 500 from the catalog."""
        for name, value in [*(request.view_args or {}).items(), *request.args.items(multi=True)]:
            if isinstance(value, str) and "\x00" in value:
                raise InvalidRequest(f"{name}: must not contain NUL characters")

    for module in (snapshots, apps, jobs, schedules, openapi):
        app.register_blueprint(module.bp, url_prefix=PREFIX)

    from sidecar.web import init_web

    init_web(app, api_key)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return ok({"status": "ok"})

    if operations.metrics is not None:  # /metrics: Prometheus' text format, no key
        from werkzeug.middleware.dispatcher import DispatcherMiddleware

        app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, {"/metrics": operations.metrics.wsgi_app()}
        )
    return app


__all__ = ["PREFIX", "create_app"]
