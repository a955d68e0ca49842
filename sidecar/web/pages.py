"""Formatting for the dashboard's templates: sizes, times, durations, status words."""

from __future__ import annotations

from datetime import UTC, datetime


def human_size(n: int | float | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def when(text: str | None) -> str:
    """An ISO time from the API as `2026-11-26 03:00 UTC`."""
    moment = parse_time(text)
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


STATUS_WORDS = {
    "completed": "OK",
    "failed": "FAILED",
    "in_progress": "running",
    "pending": "waiting",
    "queued": "queued",
    "running": "running",
    "interrupted": "INTERRUPTED",
}
