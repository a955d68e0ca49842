"""The status dashboard: a few server-rendered pages for operators, served by the API's
Flask app at `/` (templates and a little vanilla JavaScript in the package: no build step,
nothing from a CDN).

Login takes the API key and keeps a signed session cookie (HttpOnly, SameSite=Strict;
Secure with BACKUP_WEB_SECURE_COOKIE=true behind HTTPS). Every POST carries the session's
CSRF token (a form field, or the X-CSRF-Token header from the page's script) and is refused
without it. The JSON API under /api/ keeps its X-API-Key and is not reachable with the
cookie."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, abort, jsonify, redirect, request, session, url_for

from sidecar.web import charts, pages

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")
SESSION_HOURS = 12


def init_web(app: Flask, api_key: str | None) -> None:
    """Register the dashboard on `app`; without an API key (--insecure-no-auth) it needs no login."""
    secret = (
        hmac.new(api_key.encode(), b"websoft9-backup dashboard session v1", hashlib.sha256).digest()
        if api_key
        else secrets.token_bytes(32)
    )  # a new API key ends every session
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="w9_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=os.environ.get("BACKUP_WEB_SECURE_COOKIE", "").strip().lower() in ("1", "true", "yes"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WEB_API_KEY=api_key.encode() if api_key else None,
    )
    app.jinja_env.filters.update(size=pages.human_size, when=pages.when, duration=pages.duration)
    app.register_blueprint(bp)


def _logged_in() -> bool:
    from flask import current_app

    return current_app.config["WEB_API_KEY"] is None or bool(session.get("auth"))


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not _logged_in():
            if request.path.startswith("/ui/"):  # the pages' scripts: an answer they can read
                return jsonify({"error": "UNAUTHORIZED", "message": "log in again"}), 401
            return redirect(url_for("web.login", next=request.path))
        return view(*args, **kwargs)

    return wrapped


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.before_request
def _check_csrf() -> None:
    """Every POST of the dashboard carries the session's token (login included: a login form
    posted from another site must not log the victim in)."""
    if request.method != "POST":
        return
    given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(400, "the form's CSRF token is missing or wrong: reload the page and try again")


@bp.app_context_processor
def _globals() -> dict:
    return {"csrf_token": csrf_token, "logged_in": _logged_in}


from sidecar.web import views  # noqa: E402, F401 - the routes

__all__ = ["bp", "charts", "init_web", "login_required"]
