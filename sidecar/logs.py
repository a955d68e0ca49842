"""Logging: one line per event on stderr, as text or (BACKUP_LOG_FORMAT=json, config
`log.format: json`) as JSON lines. Every line written while a job runs carries its
`job_id` and `app_id` — in the job's thread, and in the job's own process."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime

FORMATS = ("text", "json")
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
app_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("app_id", default=None)


@contextlib.contextmanager
def job_context(job_id: str | None, app_id: str | None) -> Iterator[None]:
    """Lines logged inside carry this job and app."""
    job_token = job_id_var.set(job_id)
    app_token = app_id_var.set(app_id)
    try:
        yield
    finally:
        job_id_var.reset(job_token)
        app_id_var.reset(app_token)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        if getattr(record, "app_id", None) is None:
            record.app_id = app_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("app_id", "job_id"):
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s" if debug else "%(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job = getattr(record, "job_id", None)
        return f"{text} [job {job}]" if job else text


def log_format(env: dict[str, str] | None = None) -> str:
    value = (env if env is not None else os.environ).get("BACKUP_LOG_FORMAT", "").strip().lower() or "text"
    return value if value in FORMATS else "text"


def setup(level: int = logging.WARNING, debug: bool = False) -> None:
    """Replace the root logger's handlers with one on stderr in the configured format."""
    handler = logging.StreamHandler()
    handler.addFilter(_Context())
    handler.setFormatter(JsonFormatter() if log_format() == "json" else TextFormatter(debug))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
