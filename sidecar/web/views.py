"""The dashboard's routes. Pages read what the API reads (Operations and the catalog) and
act through the same jobs; an action's failure is shown on the page, never as a 500."""

from __future__ import annotations

import hmac
import math
import time
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, flash, jsonify, redirect, render_template, request, session, url_for
from peewee import fn

from sidecar.catalog.models import Backup, Job
from sidecar.catalog.records import backup_to_dict, job_to_dict
from sidecar.docker.apps import App
from sidecar.errors import AppNotFound, BackupError, DockerUnavailable
from sidecar.operations import BackupRequest, Operations, RestoreRequest
from sidecar.web import bp, charts, csrf_token, login_required
from sidecar.web.pages import STATUS_WORDS


def ops() -> Operations:
    return current_app.config["OPERATIONS"]


def _safe_next(target: str | None) -> str:
    """Only a path of this site (no scheme, no host, not //host)."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return url_for("web.apps")
    return target


@bp.errorhandler(400)
def _bad_request(exc: Any):  # type: ignore[no-untyped-def]
    return render_template("error.html", title="Refused", message=exc.description), 400


@bp.errorhandler(BackupError)
def _backup_error(exc: BackupError):  # type: ignore[no-untyped-def]
    return render_template("error.html", title=exc.code, message=str(exc)), exc.http_status


# ---- login --------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    expected = current_app.config["WEB_API_KEY"]
    target = _safe_next(request.values.get("next"))
    if expected is None:
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target, wrong=False)
    given = (request.form.get("api_key") or "").encode("utf-8", "surrogateescape")
    if not given or not hmac.compare_digest(given, expected):
        return render_template("login.html", next=target, wrong=True), 401
    session.clear()
    session.permanent = True
    session["auth"] = True
    csrf_token()  # a new token for the new session
    return redirect(target)


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    session.clear()
    return redirect(url_for("web.login"))


# ---- apps ---------------------------------------------------------------------------------------


@bp.get("/")
@login_required
def apps():  # type: ignore[no-untyped-def]
    try:
        items = ops().apps()
        problem = None
    except DockerUnavailable as exc:
        items, problem = [], str(exc)
    return render_template("apps.html", apps=items, problem=problem, words=STATUS_WORDS)


@bp.post("/apps/<app_id>/backup")
@login_required
def backup_now(app_id: str):  # type: ignore[no-untyped-def]
    try:
        job_id, _row = ops().start_backup(app_id, BackupRequest())
    except BackupError as exc:
        flash(f"{app_id}: {exc}", "error")
        return redirect(url_for("web.apps"))
    flash(f"{app_id}: backup started", "info")
    return redirect(url_for("web.job", job_id=job_id))


@bp.get("/apps/<app_id>")
@login_required
def app_detail(app_id: str):  # type: ignore[no-untyped-def]
    try:
        app: App | None = ops().app(app_id)
    except (AppNotFound, DockerUnavailable):
        app = None  # gone from the host (or no Docker): its backups are still listed
    rows, total = ops().catalog.list_backups(app_id, None, 200, 0)
    backups = [backup_to_dict(r) for r in rows]
    if app is None and not backups:
        return render_template("error.html", title="Not found", message=f"no app {app_id}"), 404
    return render_template(
        "app.html", app_id=app_id, app=app, backups=backups, total=total, chart=charts.history_svg(backups),
        words=STATUS_WORDS,
    )  # fmt: skip


@bp.get("/backups/<backup_id>")
@login_required
def backup_detail(backup_id: str):  # type: ignore[no-untyped-def]
    return render_template("backup.html", b=ops().backup_detail(backup_id), words=STATUS_WORDS)


@bp.route("/apps/<app_id>/restore/<backup_id>", methods=["GET", "POST"])
@login_required
def restore(app_id: str, backup_id: str):  # type: ignore[no-untyped-def]
    b = ops().backup_detail(backup_id)
    if b["app_id"] != app_id:
        return render_template("error.html", title="Refused", message=f"{backup_id} is not a backup of {app_id}"), 400
    sources = b.get("sources") or []
    volumes = [s for s in sources if s["kind"] == "volume"]
    databases = [s for s in sources if s["kind"] == "database"]
    wrong = False
    if request.method == "POST":
        if (request.form.get("confirm") or "").strip() == app_id:
            try:
                job_id = ops().start_restore(app_id, backup_id, RestoreRequest())
            except BackupError as exc:
                flash(f"{app_id}: {exc}", "error")
            else:
                flash(f"{app_id}: restore of {backup_id} started", "info")
                return redirect(url_for("web.job", job_id=job_id))
        else:
            wrong = True
    page = render_template("restore.html", app_id=app_id, b=b, volumes=volumes, databases=databases, wrong=wrong)
    return page, (400 if wrong else 200)


# ---- jobs ---------------------------------------------------------------------------------------


def _recent_jobs(limit: int = 50) -> list[dict]:
    rows = Job.select().order_by(Job.created_at.desc()).limit(limit)
    return [job_to_dict(r) for r in rows]


@bp.get("/jobs")
@login_required
def jobs():  # type: ignore[no-untyped-def]
    return render_template("jobs.html", jobs=_recent_jobs(), words=STATUS_WORDS)


@bp.get("/jobs/<job_id>")
@login_required
def job(job_id: str):  # type: ignore[no-untyped-def]
    return render_template("job.html", job=job_to_dict(ops().catalog.get_job(job_id)), words=STATUS_WORDS)


@bp.get("/ui/jobs.json")
@login_required
def jobs_json():  # type: ignore[no-untyped-def]
    return jsonify({"items": _recent_jobs(), "now": time.time()})


@bp.get("/ui/jobs/<job_id>.json")
@login_required
def job_json(job_id: str):  # type: ignore[no-untyped-def]
    return jsonify({"job": job_to_dict(ops().catalog.get_job(job_id)), "now": time.time()})


# ---- repository ---------------------------------------------------------------------------------


@bp.get("/repository")
@login_required
def repository():  # type: ignore[no-untyped-def]
    count, logical = (
        Backup.select(fn.COUNT(Backup.backup_id), fn.SUM(Backup.size_bytes))
        .where(Backup.status == "completed")
        .scalar(as_tuple=True)
    )
    metrics = ops().metrics  # it measures the stored size at most once a minute for /metrics
    measured = metrics.repository_size() if metrics is not None else math.nan
    stored = None if math.isnan(measured) else int(measured)
    last = Job.select().where(Job.kind == "check").order_by(Job.created_at.desc()).first()
    return render_template(
        "repository.html", info=ops().repo_info, count=count or 0, logical=logical or 0, stored=stored,
        ratio=(logical / stored) if logical and stored else None, last=None if last is None else job_to_dict(last),
        words=STATUS_WORDS,
    )  # fmt: skip


@bp.post("/repository/verify")
@login_required
def verify_repository():  # type: ignore[no-untyped-def]
    try:
        job_id = ops().start_check()
    except BackupError as exc:
        flash(str(exc), "error")
        return redirect(url_for("web.repository"))
    return redirect(url_for("web.job", job_id=job_id))
