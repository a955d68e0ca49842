"""Bad input, property-based (hypothesis): labels, cron strings, retention strings and
configuration files never crash; every rejection is the project's own error naming the
field (a label key, `schedule`/`time`/..., `retention`, `backup.<key>`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.catalog.schedules import ScheduleFields
from sidecar.configfile import BY_PATH, KEYS, load
from sidecar.errors import InvalidRequest
from sidecar.jobs.scheduling import config_from_env
from sidecar.jobs.timing import CronTiming, last_run, next_run, timing_of_fields, timing_of_label, zone
from sidecar.labels import (
    BACKUP_TYPES,
    DB_ENGINES,
    HOOK_PHASES,
    KNOWN_KEYS,
    LABEL_PREFIX,
    MAX_HOOK_TIMEOUT_S,
    AppPolicy,
    LabelError,
    Retention,
    parse_labels,
    parse_retention,
)
from sidecar.repo.retention import SAFETY_KEEP_DAYS, SAFETY_TAG, RetentionPolicy, apply_retention
from sidecar.repo.snapshot import SnapshotRecord

# deterministic-ish and nothing written into the repository (.hypothesis/)
PROPERTY = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WITH_TMP = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]  # tmp_path: one file, rewritten per example


def examples(n: int, **kw: Any) -> settings:
    return settings(PROPERTY, max_examples=n, **kw)


ZONES: tuple[tzinfo, ...] = (
    UTC,
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Australia/Lord_Howe"),
    ZoneInfo("Asia/Kolkata"),
)

# -- shared strategies ----------------------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\t\n",
        "\x00",
        "\x7f",
        "-1",
        "0",
        "-0",
        "1e400",
        "nan",
        "inf",
        "9" * 30,
        "9" * 5000,
        "-" + "9" * 30,
        "\u0663",  # an Arabic-Indic digit
        "²",
        "\uff11",  # a fullwidth digit
        "true",
        "TRUE ",
        "all",
        "@daily",
        "* * * * *",
        "days=30",
        "a=b=c",
        ",",
        "=",
        "日本語",
        "\u2028",
        "🙂",
    ]
)


def any_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Arbitrary text: random unicode (control characters included), numbers, whitespace, nasty constants."""
    return st.one_of(
        st.text(max_size=max_size),
        NASTY_TEXT,
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u3000", max_size=5),
    )


# -- 1. labels ------------------------------------------------------------------------------------------------

KNOWN = sorted(KNOWN_KEYS)
LABEL_KEY = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN).map(lambda k: k.upper()),
    st.sampled_from(KNOWN).map(lambda k: k + "x"),
    st.text(max_size=20).map(lambda s: LABEL_PREFIX + s),
    st.text(max_size=20),
    st.sampled_from(["com.docker.compose.project", "websoft9.backup", "websoft9.backup.", "websoft9.backupx.db"]),
)
LABELS = st.dictionaries(LABEL_KEY, any_text(), max_size=8)
CONTAINERS = st.dictionaries(st.text(min_size=1, max_size=10), LABELS, min_size=1, max_size=3)


def _valid_policy(policy: AppPolicy) -> None:
    """What a policy without errors promises to the rest of the sidecar."""
    if policy.schedule is not None:
        CronTiming(policy.schedule)  # the scheduler can run it
    assert policy.backup_type in BACKUP_TYPES
    if policy.retention is not None:
        counts = policy.retention.to_dict()
        assert counts and all(isinstance(n, int) and n > 0 for n in counts.values())
        assert not RetentionPolicy(**counts).empty
    if policy.storage is not None:
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", policy.storage)
    for db in policy.databases:
        assert db.engine in DB_ENGINES
    for hook in policy.hooks:
        assert hook.phase in HOOK_PHASES and hook.command.strip()
        assert 0 < hook.timeout_s <= MAX_HOOK_TIMEOUT_S


@examples(400)
@given(CONTAINERS)
@example({"app": {LABEL_PREFIX + "pre.timeout": "9" * 5000, LABEL_PREFIX + "pre": "echo"}})
@example({"app": {LABEL_PREFIX + "retention": "days=" + "9" * 5000}})
@example({"app": {LABEL_PREFIX + "schedule": "0 0 31 2 *"}})
@example({"a": {LABEL_PREFIX + "schedule": "@daily"}, "b": {LABEL_PREFIX + "schedule": "@hourly"}})
def test_labels_never_crash_and_errors_name_the_label(containers: dict[str, dict[str, str]]) -> None:
    policy = parse_labels(containers)
    assert isinstance(policy, AppPolicy)
    given_keys = {key for labels in containers.values() for key in labels if key.startswith(LABEL_PREFIX)}
    for error in policy.errors:
        assert isinstance(error, LabelError)
        assert not error.why.startswith("labels could not be parsed"), error  # the safety net never fires
        assert error.key in given_keys, error
        assert str(error).startswith(error.key), error
        assert error.why.strip()
        assert error.container is None or error.container in containers
    # every unknown websoft9.backup.* key is reported, so a typo cannot silently turn a backup off
    unknown = given_keys - KNOWN_KEYS
    assert unknown <= {error.key for error in policy.errors}
    if not given_keys:
        assert not policy.enabled and not policy.errors
    if policy.valid:
        _valid_policy(policy)


SECRET_KEYS = st.sampled_from(
    [
        LABEL_PREFIX + "db.password_env",
        LABEL_PREFIX + "db.password",
        LABEL_PREFIX + "api_token",
        LABEL_PREFIX + "Secret",
    ]
)


@examples(100)
@given(SECRET_KEYS, st.text(min_size=1, max_size=20), st.booleans())
def test_label_errors_never_echo_a_secret(key: str, secret: str, with_db: bool) -> None:
    value = "S3cr3t!" + secret
    labels = {key: value, **({LABEL_PREFIX + "db": "mysql"} if with_db else {})}
    policy = parse_labels({"app": labels})
    for error in policy.errors:
        assert "S3cr3t!" not in str(error) and "S3cr3t!" not in repr(error.to_dict())


# valid values, from the documented grammar: (label text, the value it must parse to)


def _cased(word: str) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from([str.lower, str.upper, str.title]), st.sampled_from(["", " ", "\t"])).map(
        lambda t: t[1] + t[0](word) + t[1]
    )


BOOL = st.booleans().flatmap(lambda b: _cased(str(b).lower()).map(lambda text: (text, b)))
BACKUP_TYPE = st.sampled_from(BACKUP_TYPES).flatmap(lambda t: _cased(t).map(lambda text: (text, t)))
CRON_FIELD = st.sampled_from(["*", "*/5", "0", "1-5", "1,2", "3-4/2"])
CRON = st.one_of(
    st.tuples(
        st.sampled_from(["*", "0", "*/15", "5,35", "0-30/10", "59"]),
        st.sampled_from(["*", "0", "3", "2-5", "*/6", "23"]),
        st.sampled_from(["*", "1", "15", "1-7", "28"]),
        st.sampled_from(["*", "1", "6", "1-12/3", "jan", "dec"]),
        st.sampled_from(["*", "0", "1-5", "mon-fri", "sun", "6"]),
        st.sampled_from([" ", "  ", "\t"]),
    ).map(lambda t: (t[5].join(t[:5]), " ".join(t[:5]))),
    st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"]).map(
        lambda a: (a, a)
    ),
)
RETENTION = st.dictionaries(
    st.sampled_from(["days", "last", "hourly", "daily", "weekly", "monthly", "yearly"]),
    st.integers(1, 999_999_999),
    min_size=1,
).flatmap(
    lambda counts: st.sampled_from([",", ", ", " , "]).map(
        lambda sep: (sep.join(f"{k}={n}" for k, n in counts.items()), Retention(**counts))
    )
)
STORAGE = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,15}", fullmatch=True).map(lambda s: (s, s))
VOLUMES = st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True), min_size=1, max_size=4).map(
    lambda names: (", ".join(names), tuple(dict.fromkeys(names)))
)
DURATION = st.one_of(
    st.integers(1, 86400).map(lambda s: (str(s), float(s))),
    st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
    .filter(lambda t: any(t))
    .map(lambda t: (f"{t[0]}h{t[1]}m{t[2]}s", t[0] * 3600.0 + t[1] * 60.0 + t[2])),
)

VALID_LABELS: dict[str, tuple[st.SearchStrategy[tuple[str, Any]], Callable[[AppPolicy], Any]]] = {
    "enable": (BOOL, lambda p: p.enabled),
    "schedule": (CRON, lambda p: p.schedule),
    "type": (BACKUP_TYPE, lambda p: p.backup_type),
    "retention": (RETENTION, lambda p: p.retention),
    "storage": (STORAGE, lambda p: p.storage),
    "volumes": (VOLUMES, lambda p: p.volumes),
    "stop": (BOOL, lambda p: "app" in p.stop),
    "pre.timeout": (DURATION, lambda p: p.hooks_for("pre")[0].timeout_s),
}


@examples(200)
@given(st.fixed_dictionaries({}, optional={key: strategy for key, (strategy, _) in VALID_LABELS.items()}))
def test_valid_labels_parse_to_their_values(chosen: dict[str, tuple[str, Any]]) -> None:
    labels = {LABEL_PREFIX + key: text for key, (text, _) in chosen.items()}
    if "pre.timeout" in chosen:
        labels[LABEL_PREFIX + "pre"] = "echo hi"
    policy = parse_labels({"app": labels})
    assert policy.errors == ()
    for key, (text, expected) in chosen.items():
        assert VALID_LABELS[key][1](policy) == expected, (key, text)
    if "enable" not in chosen:
        assert policy.enabled == bool(labels)
    _valid_policy(policy)


# -- 2. cron strings and schedules ----------------------------------------------------------------------------

CRON_PART = st.one_of(
    st.sampled_from(["*", "?", "L", "W", "15W", "5L", "5#3", "mon", "jan", "MON-FRI", "*/0", "-", "/", ",", "1-", "H"]),
    st.integers(-5, 100).map(str),
    st.tuples(st.integers(-2, 70), st.integers(-2, 70)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.tuples(st.sampled_from(["*", "0", "1-10"]), st.integers(-1, 100)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.lists(st.integers(0, 60), min_size=2, max_size=3).map(lambda xs: ",".join(map(str, xs))),
)
CRON_TEXT = st.one_of(
    st.lists(CRON_PART, min_size=5, max_size=5).map(" ".join),
    st.lists(CRON_PART, min_size=1, max_size=7).map(" ".join),
    CRON.map(lambda t: t[0]),
    st.sampled_from(["@reboot", "@DAILY", "@every 5m", "@daily extra", "0 0 30 2 *", "0 0 31 2,4 *", "0 0 29 2 *"]),
    any_text(30),
)
INSTANT = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.sampled_from(ZONES)
).map(lambda d: d.astimezone(UTC))


def _check_runs(timing: Any, now: datetime, tz: tzinfo) -> None:
    following = next_run(timing, now, tz)
    previous = last_run(timing, now, tz)
    assert following is None or (following.tzinfo is not None and following > now), (following, now)
    assert previous is None or (previous.tzinfo is not None and previous <= now), (previous, now)
    if following is not None and previous is not None:
        # no run lies between the last and the next: counting on from the last run finds the next one
        assert next_run(timing, previous, tz) == following, (previous, following)


@examples(250)
@given(CRON_TEXT, INSTANT, st.sampled_from(ZONES))
@example("0 0 30 2 *", datetime(2026, 1, 1, tzinfo=UTC), UTC)
@example("30 2 * * *", datetime(2026, 3, 29, 0, 30, tzinfo=UTC), ZoneInfo("Europe/Berlin"))
@example("30 2 * * *", datetime(2026, 10, 25, 0, 45, tzinfo=UTC), ZoneInfo("Europe/Berlin"))
def test_cron_text_is_an_error_or_runs_around_now(text: str, now: datetime, tz: tzinfo) -> None:
    try:
        timing = timing_of_label(text)
    except InvalidRequest as exc:
        assert exc.message.startswith("schedule ") and "cron" in exc.message
        return
    _check_runs(timing, now, tz)


@examples(200)
@given(CRON_TEXT)
def test_a_schedule_label_the_parser_accepts_is_one_the_scheduler_runs(text: str) -> None:
    policy = parse_labels({"app": {LABEL_PREFIX + "schedule": text}})
    if policy.valid:
        assert policy.schedule is not None
        timing_of_label(policy.schedule)
    else:
        assert [e.key for e in policy.errors] == [LABEL_PREFIX + "schedule"]


FIELD_NAMES = ("frequency", "time", "day_of_week", "day_of_month", "cron")


@examples(250)
@given(
    st.one_of(st.sampled_from(["daily", "weekly", "monthly", "cron"]), any_text(10)),
    st.one_of(
        st.tuples(st.integers(-1, 25), st.integers(-1, 61)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}"),
        st.sampled_from(
            ["03:00", "3:00", "24:00", "23:59", "00:60", "ab:cd", "03", "03:00:00", ":", "\u0661\u0662:\u0660\u0660"]
        ),
        any_text(8),
    ),
    st.one_of(st.none(), st.integers(-3, 9)),
    st.one_of(st.none(), st.integers(-3, 40)),
    st.one_of(st.none(), CRON_TEXT),
    INSTANT,
    st.sampled_from(ZONES),
)
@example("daily", "ab:cd", None, None, None, datetime(2026, 1, 1, tzinfo=UTC), UTC)
@example("daily", "25:00", None, None, None, datetime(2026, 1, 1, tzinfo=UTC), UTC)
@example("weekly", "03:00", None, None, None, datetime(2026, 1, 1, tzinfo=UTC), UTC)
@example("monthly", "03:00", None, -2, None, datetime(2026, 1, 1, tzinfo=UTC), UTC)
@example("monthly", "24:00", None, 5, None, datetime(2026, 1, 1, tzinfo=UTC), UTC)
def test_api_schedule_fields_are_an_error_naming_the_field_or_run_around_now(
    frequency: str,
    time: str,
    day_of_week: int | None,
    day_of_month: int | None,
    cron: str | None,
    now: datetime,
    tz: tzinfo,
) -> None:
    try:
        timing = timing_of_fields(frequency, time, day_of_week, day_of_month, cron)
    except InvalidRequest as exc:
        named = exc.message.split(":", 1)[0]
        cron_text = frequency == "cron" and exc.message.startswith("schedule ")  # the cron text is the schedule
        assert named in FIELD_NAMES or cron_text, exc.message
        return
    _check_runs(timing, now, tz)


@examples(200)
@given(
    st.sampled_from(["daily", "weekly", "monthly", "cron"]),
    st.one_of(
        st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}"),
        st.sampled_from(["03:00\n", "0\u0663:00", " 03:00", "3:00"]),
    ),
    st.one_of(st.none(), st.integers(0, 6)),  # the API's bounds (api/schedules.py)
    st.one_of(st.none(), st.integers(1, 31)),
    st.one_of(st.none(), CRON_TEXT, CRON.map(lambda t: t[0])),
    INSTANT,
    st.sampled_from(ZONES),
)
def test_an_api_schedule_the_catalog_accepts_is_one_the_scheduler_runs(
    frequency: str,
    time: str,
    day_of_week: int | None,
    day_of_month: int | None,
    cron: str | None,
    now: datetime,
    tz: tzinfo,
) -> None:
    fields = ScheduleFields("app", frequency=frequency, time=time, day_of_week=day_of_week, day_of_month=day_of_month)
    fields.cron = cron
    try:
        fields.check()
    except InvalidRequest as exc:
        assert exc.message.split(":", 1)[0] in FIELD_NAMES, exc.message
        return
    _check_runs(timing_of_fields(frequency, time, day_of_week, day_of_month, cron), now, tz)


@examples(150)
@given(any_text(30))
@example("Europe")  # a directory of the time zone database
@example("a" * 300)  # a file name too long for the file system
@example("Europe/../Europe/Berlin")
def test_tz_is_a_zone_or_an_error_naming_tz(name: str) -> None:
    try:
        tz = zone(name)
    except InvalidRequest as exc:
        assert exc.message.startswith("TZ: ")
        return
    assert datetime(2026, 1, 1, tzinfo=tz).utcoffset() is not None


# -- 3. retention ---------------------------------------------------------------------------------------------

RETENTION_ITEM = st.tuples(
    st.one_of(st.sampled_from(["days", "last", "hourly", "daily", "weekly", "monthly", "yearly"]), any_text(6)),
    st.sampled_from(["=", " = ", "", "=="]),
    st.one_of(st.integers(-3, 10**12).map(str), NASTY_TEXT, any_text(6)),
).map("".join)
RETENTION_TEXT = st.one_of(
    st.lists(RETENTION_ITEM, min_size=1, max_size=4).map(",".join),
    RETENTION.map(lambda t: t[0]),
    any_text(30),
)


@examples(300)
@given(RETENTION_TEXT)
@example("days=" + "9" * 5000)
@example("days=" + "9" * 12)
@example("days=\u0663")
def test_retention_text_is_a_policy_or_an_error_naming_retention(text: str) -> None:
    # the scheduler's parser (BACKUP_RETENTION, defaults.retention_days)
    try:
        policy = RetentionPolicy.parse(text)
    except InvalidRequest as exc:
        assert exc.message.startswith("retention ")
        with pytest.raises(InvalidRequest, match=r"^BACKUP_RETENTION: retention "):
            config_from_env({"BACKUP_RETENTION": text} if text.strip() else {"BACKUP_RETENTION": "x"})
        policy = None
    else:
        assert not policy.empty
        assert RetentionPolicy.parse(policy.describe()) == policy  # round trip
    # the label's parser
    labelled = parse_labels({"app": {LABEL_PREFIX + "retention": text}})
    if labelled.valid:
        assert labelled.retention is not None
        # what the label accepts, the scheduler reads the same way
        assert policy == RetentionPolicy(**labelled.retention.to_dict())
    else:
        assert [e.key for e in labelled.errors] == [LABEL_PREFIX + "retention"]
        with pytest.raises(ValueError):
            parse_retention(text)


RULES = ("days", "last", "hourly", "daily", "weekly", "monthly", "yearly")


@examples(150)
@given(
    st.dictionaries(
        st.sampled_from(RULES),
        st.one_of(st.integers(), st.integers(-3, 3), st.booleans(), st.none(), st.floats(), st.text(max_size=3)),
        max_size=7,
    )
)
def test_keep_rules_are_a_policy_or_an_error_naming_the_rule(rules: dict[str, Any]) -> None:
    # --keep-* options and the API's retention fields build the policy directly
    try:
        policy = RetentionPolicy(**rules)
    except InvalidRequest as exc:
        name = exc.message.split()[1]
        assert name in rules and exc.message.startswith(f"retention {name} must be a whole number >= 0"), exc.message
        return
    assert all(isinstance(getattr(policy, rule), int) and getattr(policy, rule) >= 0 for rule in RULES)
    assert policy.empty == (not any(rules.values()))
    decisions = apply_retention([snapshot(0, BASE, []), snapshot(1, BASE - timedelta(days=400), [])], policy, BASE)
    assert decisions[0].keep


def snapshot(i: int, when: datetime, tags: list[str]) -> SnapshotRecord:
    return SnapshotRecord(
        backup_id=f"backup_{i}",
        app_id="app",
        app_name="app",
        time=when,
        backup_type="full",
        hostname="host",
        sources=[],
        tags=tags,
        id=f"s{i:04d}",
    )


BASE = datetime(2024, 6, 30, 12, tzinfo=UTC)
SNAP_TIME = st.one_of(
    st.integers(0, 3 * 365 * 24 * 60).map(lambda m: BASE - timedelta(minutes=m)),
    st.integers(0, 72).map(lambda h: BASE - timedelta(hours=h)),  # dense: many in one hour or day
    st.integers(-10, 10).map(lambda m: BASE + timedelta(minutes=m)),  # around `now`, some after it
)
SNAPSHOTS = st.lists(st.tuples(SNAP_TIME, st.sampled_from([[], [], ["manual"], [SAFETY_TAG]])), max_size=25).map(
    lambda items: [snapshot(i, when, tags) for i, (when, tags) in enumerate(items)]
)
COUNT = st.one_of(st.just(0), st.integers(1, 5), st.integers(0, 40), st.integers(0, 10**15))
POLICY = st.builds(
    RetentionPolicy,
    days=st.one_of(st.just(0), st.integers(1, 400), st.integers(0, 10**12)),
    last=COUNT,
    hourly=COUNT,
    daily=COUNT,
    weekly=COUNT,
    monthly=COUNT,
    yearly=COUNT,
)
NOW = st.integers(-60, 60 * 24 * 30).map(lambda m: BASE + timedelta(minutes=m))

_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: (t.isocalendar().year, t.isocalendar().week),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def described(
    snapshots: list[SnapshotRecord], policy: RetentionPolicy, now: datetime, tz: tzinfo, allow_empty: bool
) -> set[str]:
    """The ids the policy keeps, straight from its description (an independent model of apply_retention)."""
    ordered = sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True)
    keep: set[str] = set()
    if policy.days:
        days_back = (now - datetime.min.replace(tzinfo=UTC)).days
        keep |= {s.id for s in ordered if policy.days > days_back or s.time >= now - timedelta(days=policy.days)}
    keep |= {s.id for s in ordered[: policy.last]}
    for name, bucket_of in _BUCKETS.items():
        newest: dict[tuple[int, ...], SnapshotRecord] = {}
        for s in ordered:  # newest first: the first one seen of a period is its newest
            newest.setdefault(bucket_of(s.time.astimezone(tz)), s)
        keep |= {s.id for s in list(newest.values())[: getattr(policy, name)]}
    keep |= {s.id for s in ordered if SAFETY_TAG in s.tags and s.time >= now - timedelta(days=SAFETY_KEEP_DAYS)}
    if ordered and not allow_empty:
        keep.add(ordered[0].id)  # the newest snapshot is never forgotten
    return keep


@examples(300)
@given(SNAPSHOTS, POLICY, NOW, st.sampled_from(ZONES), st.booleans())
@example([snapshot(0, BASE, [])], RetentionPolicy(days=10**12), BASE, UTC, False)
@example([snapshot(0, BASE - timedelta(days=9), [])], RetentionPolicy(days=1_000_000), BASE, UTC, False)
@example(  # a safety snapshot of a restore, kept 7 days, used to cost the newest snapshot its place
    [snapshot(0, BASE - timedelta(days=5), [SAFETY_TAG]), snapshot(1, BASE - timedelta(days=4), [])],
    RetentionPolicy(days=3),
    BASE,
    UTC,
    False,
)
def test_retention_keeps_what_the_policy_describes(
    snapshots: list[SnapshotRecord], policy: RetentionPolicy, now: datetime, tz: tzinfo, allow_empty: bool
) -> None:
    decisions = apply_retention(snapshots, policy, now, tz, allow_empty=allow_empty)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snapshots)
    assert [d.snapshot.time for d in decisions] == sorted((s.time for s in snapshots), reverse=True)
    assert all(d.keep == bool(d.reasons) for d in decisions)
    kept = {d.snapshot.id for d in decisions if d.keep}
    if snapshots and not allow_empty:
        assert decisions[0].keep  # the newest snapshot is never forgotten
    assert kept == described(snapshots, policy, now, tz, allow_empty)
    # idempotent: applying the policy to what it kept keeps all of it
    again = apply_retention([s for s in snapshots if s.id in kept], policy, now, tz, allow_empty=allow_empty)
    assert {d.snapshot.id for d in again if d.keep} == kept


# -- 4. configuration files -----------------------------------------------------------------------------------

SECTIONS = sorted({k.path.split(".")[0] for k in KEYS if "." in k.path})
YAML_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text(20),
    st.sampled_from(
        ["${HOME}", "${UNSET_VAR}", "${", "yes", "off", "0x1F", "1_000", "12:30", "2024-01-01", "2024-13-01"]
    ),
)
YAML_VALUE = st.recursive(
    YAML_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
KNOWN_VALUE = st.one_of(
    YAML_SCALAR,
    st.sampled_from(["auto", "path", "zstd", "gzip", "local", "s3", "full", "json", "UTC", "Europe/Berlin", "5m"]),
    st.sampled_from(["0 4 * * 0", "@daily", "not cron", "STANDARD_IA", "Mars/Olympus", "Europe", "30s", "-5s"]),
    st.integers(-2, 70),
    YAML_VALUE,
)
CONFIG_KEY = st.one_of(
    st.sampled_from(sorted(BY_PATH)),
    st.sampled_from(SECTIONS).flatmap(lambda s: st.text(min_size=1, max_size=8).map(lambda k: f"{s}.{k}")),
    st.text(min_size=1, max_size=10),
)


def _nest(flat: dict[str, Any]) -> dict[Any, Any]:
    """{'limits.max_backup_size_gb': 5} -> {'limits': {'max_backup_size_gb': 5}} (a clash keeps the first)."""
    out: dict[Any, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node.setdefault(leaf, value)
    return out


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for key, value in node.items() for p in _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))]
    return [prefix]


def _escaped(path: str) -> str:
    return path if path.isprintable() else path.encode("unicode_escape").decode()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _check_config_error(exc: InvalidRequest, path: Path) -> list[str]:
    """The error's lines after the first: each names a key (or the top level)."""
    first, *rest = exc.message.split("\n")
    assert first.startswith(f"configuration file {path}"), exc.message
    for line in rest:
        assert re.match(r"  (backup[.:]|the file must have one top-level key)", line), line
    return rest


@examples(250, suppress_health_check=WITH_TMP)
@given(st.dictionaries(CONFIG_KEY, KNOWN_VALUE, max_size=6), st.sampled_from(["backup", "backup", "Backup", None]))
@example({"limits.max_backup_size_gb": "9" * 5000}, "backup")
@example({"api": None}, "backup")
@example({"\n": 0}, "backup")
@example({"\x85": 0}, "backup")  # a key with a line break: still one line per problem
@example({"storage": ["a"]}, "backup")
@example({"scheduler.timezone": "Europe"}, "backup")
@example({"scheduler.timezone": "a" * 300}, "backup")
def test_config_file_loads_or_names_the_key(tmp_path: Path, flat: dict[str, Any], top: str | None) -> None:
    backup = _nest(flat)
    doc: Any = {top: backup} if top is not None else backup
    text = yaml.safe_dump(doc, allow_unicode=True)
    path = _write(tmp_path, "backup.yaml", text.encode())
    try:
        config = load(path, {"HOME": "/root"})
    except InvalidRequest as exc:
        lines = _check_config_error(exc, path)
        assert lines
        if top == "backup" and len(flat) == 1:
            # the one key the file has (as YAML reads it back: it folds a NEL in a key to a space) is the one named
            paths = [_escaped(p) for p in _leaf_paths(yaml.safe_load(text)["backup"])]
            assert all(any(p in line for p in paths) for line in lines), (paths, lines)
        return
    for key, value in config.values.items():
        spec = BY_PATH[key]
        assert isinstance(value, spec.kind) and not (spec.kind is int and isinstance(value, bool))
        if spec.choices:
            assert value in spec.choices
        if spec.kind is int:
            assert (spec.low is None or spec.low <= value) and (spec.high is None or value <= spec.high)
    assert all(isinstance(name, str) and isinstance(value, str) for name, value in config.applied.items())


@examples(150, suppress_health_check=WITH_TMP)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.text(alphabet=":-[]{}!&*#|>'\"%@` \n\tab01", max_size=80).map(str.encode),
        st.sampled_from(
            [
                b"\xff\xfe\x00",
                b"backup:\n  limits:\n    max_backup_size_gb: " + b"9" * 5000 + b"\n",
                b"backup: !!python/object:os.system {}",
                b"backup: &a [*a]",
                b"\x00",
                b"backup:\n  defaults:\n    retention_days: 2024-13-01\n",
            ]
        ),
    )
)
@example(b"\x80not UTF-8")
@example(b"[" * 1000)  # nested too deeply for the YAML reader
@example(b"backup: " + b"[" * 1000 + b"]" * 1000)
def test_any_bytes_load_or_name_the_file(tmp_path: Path, data: bytes) -> None:
    path = _write(tmp_path, "random.yaml", data)
    try:
        load(path, {})
    except InvalidRequest as exc:
        _check_config_error(exc, path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"backup:\n  api:\n    key: \x80\n", "not UTF-8 text (byte 24)"),
        (b"[" * 1000, "not valid YAML (nested too deeply)"),
        (b"backup:\n  defaults:\n    retention_days: 2024-13-01\n", "not valid YAML (month must be in 1..12)"),
        (b"backup:\n  limits:\n    max_backup_size_gb: " + b"9" * 5000 + b"\n", "not valid YAML (Exceeds the limit"),
    ],
)
def test_config_files_that_used_to_crash(tmp_path: Path, data: bytes, message: str) -> None:
    path = _write(tmp_path, "backup.yaml", data)
    with pytest.raises(InvalidRequest) as err:
        load(path, {})
    assert err.value.message.startswith(f"configuration file {path}: {message}")
    assert "\n" not in err.value.message


def test_config_values_that_used_to_crash(tmp_path: Path) -> None:
    text = 'backup:\n  limits:\n    max_backup_size_gb: "' + "9" * 5000 + '"\n  "a\\nb": 1\n'
    with pytest.raises(InvalidRequest) as err:
        load(_write(tmp_path, "backup.yaml", text.encode()), {})
    lines = err.value.message.split("\n")[1:]
    assert sorted(lines) == [
        "  backup.a\\nb: unknown key",  # one line, whatever the key holds
        "  backup.limits.max_backup_size_gb: must be from 1 to 1000000, got " + "9" * 30 + "...",
    ]
