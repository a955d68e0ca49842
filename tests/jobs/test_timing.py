"""When schedules run: cron, the API's daily/weekly/monthly, and DST in two zones."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sidecar.errors import InvalidRequest
from sidecar.jobs.timing import (
    CronTiming,
    last_run,
    next_run,
    runs_between,
    timing_of_fields,
    timing_of_label,
    zone,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def local(tz, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=tz, fold=fold).astimezone(UTC)


NEXT_RUN_CASES = [
    # (timing, zone, after, expected next run)
    ("cron 0 3 * * *", timing_of_label("0 3 * * *"), UTC, utc(2026, 1, 5, 2, 59), utc(2026, 1, 5, 3, 0)),
    ("at the due time: the next day", timing_of_label("0 3 * * *"), UTC, utc(2026, 1, 5, 3), utc(2026, 1, 6, 3)),
    ("@daily", timing_of_label("@daily"), UTC, utc(2026, 1, 5, 10), utc(2026, 1, 6)),
    ("@hourly", timing_of_label("@hourly"), UTC, utc(2026, 1, 5, 10, 1), utc(2026, 1, 5, 11)),
    ("every minute", timing_of_label("* * * * *"), UTC, utc(2026, 1, 5, 10, 0, 30), utc(2026, 1, 5, 10, 1)),
    ("cron with a weekday list", timing_of_label("15 4 * * 1,4"), UTC, utc(2026, 11, 26, 5), utc(2026, 11, 30, 4, 15)),
    (
        "daily 03:00 in Berlin (winter)",
        timing_of_fields("daily", "03:00", None, None, None),
        BERLIN,
        utc(2026, 1, 5, 12),
        utc(2026, 1, 6, 2),
    ),
    (
        "weekly, Monday 03:30, from a Thursday",
        timing_of_fields("weekly", "03:30", 1, None, None),
        UTC,
        utc(2026, 11, 26, 12),
        utc(2026, 11, 30, 3, 30),
    ),
    (
        "weekly, Sunday (0) 23:59",
        timing_of_fields("weekly", "23:59", 0, None, None),
        UTC,
        utc(2026, 11, 26),
        utc(2026, 11, 29, 23, 59),
    ),
    (
        "monthly on the 31st in a 30-day month: its last day",
        timing_of_fields("monthly", "03:00", None, 31, None),
        UTC,
        utc(2026, 11, 1),
        utc(2026, 11, 30, 3),
    ),
    (
        "monthly on the 31st, after November's run: December 31st",
        timing_of_fields("monthly", "03:00", None, 31, None),
        UTC,
        utc(2026, 11, 30, 3),
        utc(2026, 12, 31, 3),
    ),
    (
        "monthly on the 30th in February: the 28th",
        timing_of_fields("monthly", "01:00", None, 30, None),
        UTC,
        utc(2027, 2, 1),
        utc(2027, 2, 28, 1),
    ),
    (
        "monthly on the 31st in a leap February: the 29th",
        timing_of_fields("monthly", "01:00", None, 31, None),
        UTC,
        utc(2028, 2, 1),
        utc(2028, 2, 29, 1),
    ),
    (
        "monthly on the 15th",
        timing_of_fields("monthly", "12:00", None, 15, None),
        UTC,
        utc(2026, 11, 15, 12),
        utc(2026, 12, 15, 12),
    ),
    (
        "cron through the API",
        timing_of_fields("cron", "03:00", None, None, "*/20 * * * *"),
        UTC,
        utc(2026, 1, 5, 10, 5),
        utc(2026, 1, 5, 10, 20),
    ),
    # DST: Europe/Berlin skips 02:00-03:00 on 2026-03-29 and repeats 02:00-03:00 on 2026-10-25
    (
        "Berlin, 02:30 on the day the clock skips it: at the jump (03:00 CEST)",
        timing_of_label("30 2 * * *"),
        BERLIN,
        local(BERLIN, 2026, 3, 28, 12),
        local(BERLIN, 2026, 3, 29, 3, 0),
    ),
    (
        "Berlin, the day after the skip: 02:30 CEST again",
        timing_of_label("30 2 * * *"),
        BERLIN,
        local(BERLIN, 2026, 3, 29, 3, 0),
        local(BERLIN, 2026, 3, 30, 2, 30),
    ),
    (
        "Berlin, 02:30 on the day the clock repeats it: the first one (CEST)",
        timing_of_label("30 2 * * *"),
        BERLIN,
        local(BERLIN, 2026, 10, 24, 12),
        utc(2026, 10, 25, 0, 30),
    ),
    (
        "Berlin, after the first 02:30 of the repeat: not the second, the next day",
        timing_of_label("30 2 * * *"),
        BERLIN,
        utc(2026, 10, 25, 0, 30),
        local(BERLIN, 2026, 10, 26, 2, 30),
    ),
    # America/New_York skips 02:00-03:00 on 2026-03-08 and repeats 01:00-02:00 on 2026-11-01
    (
        "New York, 02:30 on the day the clock skips it: at the jump (03:00 EDT)",
        timing_of_label("30 2 * * *"),
        NEW_YORK,
        local(NEW_YORK, 2026, 3, 7, 12),
        utc(2026, 3, 8, 7, 0),
    ),
    (
        "New York, 01:30 on the day the clock repeats it: the first one (EDT)",
        timing_of_label("30 1 * * *"),
        NEW_YORK,
        local(NEW_YORK, 2026, 10, 31, 12),
        utc(2026, 11, 1, 5, 30),
    ),
    (
        "New York, in the repeated hour's second pass: the next day",
        timing_of_label("30 1 * * *"),
        NEW_YORK,
        utc(2026, 11, 1, 6, 10),  # 01:10 EST, the second 01:10
        local(NEW_YORK, 2026, 11, 2, 1, 30),
    ),
]


@pytest.mark.parametrize(
    ("what", "timing", "tz", "after", "expected"), NEXT_RUN_CASES, ids=[c[0] for c in NEXT_RUN_CASES]
)
def test_next_run(what, timing, tz, after, expected):
    got = next_run(timing, after, tz)
    assert got == expected, f"{what}: {got} != {expected}"
    assert last_run(timing, got, tz) == got  # the run found is a run
    assert last_run(timing, got - timedelta(seconds=1), tz) < got


RUNS_PER_DAY = [
    # (what, cron, zone, local day, runs that day)
    ("Berlin spring day, daily 02:30", "30 2 * * *", BERLIN, (2026, 3, 29), 1),
    ("Berlin autumn day, daily 02:30", "30 2 * * *", BERLIN, (2026, 10, 25), 1),
    ("Berlin spring day, hourly: 23 hours", "0 * * * *", BERLIN, (2026, 3, 29), 23),
    ("Berlin autumn day, hourly: the repeated hour once", "0 * * * *", BERLIN, (2026, 10, 25), 24),
    ("Berlin spring day, every 15 min: the skipped hour once", "*/15 * * * *", BERLIN, (2026, 3, 29), 92),
    ("New York spring day, daily 02:30", "30 2 * * *", NEW_YORK, (2026, 3, 8), 1),
    ("New York autumn day, daily 01:30", "30 1 * * *", NEW_YORK, (2026, 11, 1), 1),
    ("UTC, every minute", "* * * * *", UTC, (2026, 3, 29), 1440),
]


@pytest.mark.parametrize(("what", "cron", "tz", "day", "count"), RUNS_PER_DAY, ids=[c[0] for c in RUNS_PER_DAY])
def test_runs_in_a_day(what, cron, tz, day, count):
    start = datetime(*day, tzinfo=tz).astimezone(UTC) - timedelta(microseconds=1)
    end = (datetime(*day, tzinfo=tz) + timedelta(days=1)).astimezone(UTC) - timedelta(microseconds=1)
    assert runs_between(CronTiming(cron), start, end, tz) == count


def test_runs_are_strictly_increasing_across_a_transition():
    timing = timing_of_label("*/10 * * * *")
    when = local(BERLIN, 2026, 10, 25, 0, 0)
    seen = []
    for _ in range(40):
        when = next_run(timing, when, BERLIN)
        seen.append(when)
    assert seen == sorted(set(seen))
    assert max(b - a for a, b in itertools.pairwise(seen)) <= timedelta(hours=1, minutes=10)


def test_last_run_is_the_latest_at_or_before_now():
    timing = timing_of_label("0 3 * * *")
    assert last_run(timing, utc(2026, 1, 5, 3), UTC) == utc(2026, 1, 5, 3)
    assert last_run(timing, utc(2026, 1, 5, 2, 59, 59), UTC) == utc(2026, 1, 4, 3)
    monthly = timing_of_fields("monthly", "03:00", None, 31, None)
    assert last_run(monthly, utc(2026, 12, 1), UTC) == utc(2026, 11, 30, 3)
    # Berlin's repeated hour: at 02:10 CET (second pass) 02:20 has run already, in its first pass
    berlin = timing_of_label("20 2 * * *")
    assert last_run(berlin, utc(2026, 10, 25, 1, 10), BERLIN) == utc(2026, 10, 25, 0, 20)
    assert last_run(berlin, utc(2026, 10, 25, 0, 15), BERLIN) == local(BERLIN, 2026, 10, 24, 2, 20)


@pytest.mark.parametrize("bad", ["61 * * * *", "* * * *", "0 0 * * * *", "@often", "", "0 3 * * MON-"])
def test_a_bad_cron_is_refused_naming_it(bad):
    with pytest.raises(InvalidRequest, match="not a valid cron expression"):
        CronTiming(bad)


def test_a_cron_that_never_matches_has_no_next_run():
    assert next_run(CronTiming("0 0 30 2 *"), utc(2026, 1, 1), UTC) is None


def test_time_zone_from_tz():
    assert zone(None) is UTC and zone("") is UTC and zone("UTC") is UTC
    assert zone("Europe/Berlin") == BERLIN
    with pytest.raises(InvalidRequest, match="TZ: unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
