"""When a schedule runs: wall-clock times in the scheduler's time zone, DST-safe.

A schedule names wall-clock times ("02:30 every day"); `next_run` turns them
into instants. A wall time the clock skips (spring forward) runs once, at the
moment the clock jumps (02:30 in Europe/Berlin on the last Sunday of March runs
at 03:00 CEST); a wall time the clock shows twice (fall back) runs once, at its
first occurrence. A schedule that names every minute of a skipped hour runs
once for all of them, at the jump.

Schedules: a 5-field cron expression or @hourly/@daily/@weekly/@monthly/@yearly
(croniter, evaluated on naive wall times), and the API's daily/weekly/monthly
at HH:MM. `monthly` on a day the month does not have (31 in April, 30 in
February) runs on the month's last day: an operator who asks for "the 31st"
wants a backup every month, not seven a year.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from sidecar.errors import InvalidRequest

_HH_MM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")  # as loose as the catalog's check of `time`
_MAX_STEPS = 2000  # candidates looked at before giving up (a cron that never matches, e.g. 0 0 30 2 *)


class Timing:
    """Wall-clock times a schedule names, as naive datetimes (no time zone)."""

    text: str

    def after(self, wall: datetime) -> datetime | None:
        """The first named wall time strictly after `wall` (None: there is none)."""
        raise NotImplementedError

    def before(self, wall: datetime) -> datetime | None:
        """The last named wall time at or before `wall` (None: there is none)."""
        raise NotImplementedError


@dataclass(frozen=True)
class CronTiming(Timing):
    text: str

    def __post_init__(self) -> None:
        try:
            words = self.text.split()
            shape = len(words) == 5 or (len(words) == 1 and self.text.startswith("@"))
            ok = shape and self.text.isascii() and bool(croniter.is_valid(self.text))
        except Exception:  # croniter is third-party: whatever it raises means "not valid"
            ok = False
        if not ok:
            raise InvalidRequest(
                f"schedule {self.text!r} is not a valid cron expression "
                "(5 fields, or @hourly, @daily, @weekly, @monthly, @yearly)"
            )

    def after(self, wall: datetime) -> datetime | None:
        try:
            return croniter(self.text, wall).get_next(datetime)
        except CroniterBadDateError:  # it never matches (0 0 30 2 *)
            return None

    def before(self, wall: datetime) -> datetime | None:
        # croniter's get_prev is strictly before its start: start one second later for "at or before"
        try:
            return croniter(self.text, wall.replace(microsecond=0) + timedelta(seconds=1)).get_prev(datetime)
        except CroniterBadDateError:
            return None


@dataclass(frozen=True)
class MonthlyTiming(Timing):
    """Day `day` of every month at hour:minute; the month's last day when it is shorter."""

    day: int
    hour: int
    minute: int

    @property
    def text(self) -> str:  # type: ignore[override]
        return f"monthly day {self.day} {self.hour:02d}:{self.minute:02d}"

    def _in(self, year: int, month: int) -> datetime:
        day = min(self.day, calendar.monthrange(year, month)[1])
        return datetime(year, month, day, self.hour, self.minute)

    def _months(self, year: int, month: int, step: int) -> Iterator[datetime]:
        while True:
            yield self._in(year, month)
            month += step
            if month == 13:
                year, month = year + 1, 1
            elif month == 0:
                year, month = year - 1, 12

    def after(self, wall: datetime) -> datetime:
        return next(t for t in self._months(wall.year, wall.month, 1) if t > wall)

    def before(self, wall: datetime) -> datetime:
        return next(t for t in self._months(wall.year, wall.month, -1) if t <= wall)


def timing_of_label(schedule: str) -> Timing:
    return CronTiming(schedule)


def timing_of_fields(
    frequency: str, time: str, day_of_week: int | None, day_of_month: int | None, cron: str | None
) -> Timing:
    """The timing of an API schedule (the epic's BackupSchedule fields); InvalidRequest naming the field."""
    if frequency == "cron":
        return CronTiming(cron or "")
    if frequency not in ("daily", "weekly", "monthly"):
        raise InvalidRequest(f"frequency: unknown {frequency!r}")
    match = _HH_MM.fullmatch(time.strip()) if isinstance(time, str) else None
    if match is None:
        raise InvalidRequest(f"time: must be HH:MM (00:00 to 23:59), got {time!r}")
    hour, minute = int(match[1]), int(match[2])
    if frequency == "daily":
        return CronTiming(f"{minute} {hour} * * *")
    if frequency == "weekly":
        if day_of_week is None or not 0 <= day_of_week <= 6:
            raise InvalidRequest(
                f"day_of_week: needed with frequency weekly (0-6, Sunday-Saturday), got {day_of_week!r}"
            )
        return CronTiming(f"{minute} {hour} * * {day_of_week}")  # 0-6, Sunday-Saturday, as cron
    day = int(day_of_month or 1)
    if not 1 <= day <= 31:
        raise InvalidRequest(f"day_of_month: must be from 1 to 31, got {day_of_month!r}")
    return MonthlyTiming(day, hour, minute)


def zone(name: str | None) -> tzinfo:
    """The scheduler's time zone from TZ (an IANA name; empty or unset: UTC)."""
    name = (name or "").strip().lstrip(":")
    if not name or name in ("UTC", "Etc/UTC", "UTC0"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, a name too long
        raise InvalidRequest(f"TZ: unknown time zone {name!r} (use an IANA name such as Europe/Berlin)") from None


# ---- wall times to instants -----------------------------------------------------------------


def _offset(instant: datetime, tz: tzinfo) -> timedelta:
    return instant.astimezone(tz).utcoffset() or timedelta(0)


def instant_of(wall: datetime, tz: tzinfo) -> datetime:
    """The instant (aware, UTC) a wall time runs at: its first occurrence, or the jump
    for a time the clock skips."""
    first = wall.replace(tzinfo=tz, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) == wall:
        return utc  # exists (for a repeated time, fold=0 is the first occurrence)
    # skipped: the jump lies between `wall` read with the offset after it and with the one before it
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = utc
    if lo > hi:
        lo, hi = hi, lo
    after_offset = _offset(hi, tz)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if _offset(mid, tz) == after_offset:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def next_run(timing: Timing, after: datetime, tz: tzinfo) -> datetime | None:
    """The first run strictly after the instant `after` (aware), as an aware UTC instant;
    None if the schedule never runs again within _MAX_STEPS candidates."""
    # instant_of is non-decreasing in the wall time and maps `after`'s own wall time to `after` or
    # earlier, so no earlier wall time runs after `after`
    wall = _wall(after, tz)
    for _ in range(_MAX_STEPS):
        found = timing.after(wall)
        if found is None:
            return None
        wall = found
        when = instant_of(wall, tz)
        if when > after:
            return when
    return None


def last_run(timing: Timing, now: datetime, tz: tzinfo) -> datetime | None:
    """The latest run at or before the instant `now`, as an aware UTC instant."""
    # in the second pass of a repeated hour, later wall times already ran (their first pass):
    # start as far ahead as the clock was turned back near `now`
    nearby = (_offset(now + timedelta(hours=h), tz) for h in (-3, -1, 1, 3))
    wall = _wall(now, tz) + max(timedelta(0), max(nearby) - _offset(now, tz))
    for _ in range(_MAX_STEPS):
        found = timing.before(wall)
        if found is None:
            return None
        wall = found
        when = instant_of(wall, tz)
        if when <= now:
            return when
        wall -= timedelta(seconds=1)
    return None


def runs_between(timing: Timing, start: datetime, end: datetime, tz: tzinfo, limit: int = 10_000) -> int:
    """How many runs fall in (start, end], counting at most `limit`."""
    count = 0
    when = next_run(timing, start, tz)
    while when is not None and when <= end and count < limit:
        count += 1
        when = next_run(timing, when, tz)
    return count


def iso_z(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")
