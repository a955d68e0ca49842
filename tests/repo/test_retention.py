"""Retention (sidecar/repo/retention.py): which snapshots of one app to keep, restic's semantics."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sidecar.errors import InvalidRequest
from sidecar.repo.retention import RetentionPolicy, apply_retention
from sidecar.repo.snapshot import SnapshotRecord

NOW = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def snap(snapshot_id: str, when: datetime | str) -> SnapshotRecord:
    time = t(when) if isinstance(when, str) else when
    return SnapshotRecord(
        backup_id=f"backup_{snapshot_id}",
        app_id="app",
        app_name="app",
        time=time,
        backup_type="full",
        hostname="host",
        sources=[],
        id=snapshot_id,
    )


def kept(decisions) -> set[str]:
    return {d.snapshot.id for d in decisions if d.keep}


# A history used by several cases (times in UTC).
HISTORY = {
    "A": "2024-03-10T10:00",
    "B": "2024-03-10T09:00",
    "C": "2024-03-09T18:00",
    "D": "2024-03-08T12:00",
    "E": "2024-02-20T12:00",
    "F": "2024-02-01T00:00",
    "G": "2024-01-15T08:00",
    "H": "2023-12-31T23:59",
    "I": "2022-07-01T00:00",
}

CASES = [
    # (id, policy, snapshots {id: time}, now, kept ids)
    ("last=2", "last=2", HISTORY, NOW, {"A", "B"}),
    ("last more than there are", "last=50", HISTORY, NOW, set(HISTORY)),
    (
        "hourly: newest of each hour that has snapshots",
        "hourly=2",
        {"a": "2024-01-01T13:00", "b": "2024-01-01T11:40", "c": "2024-01-01T11:10", "d": "2024-01-01T10:50"},
        NOW,
        {"a", "b"},
    ),
    (
        "daily: days without snapshots do not count",
        "daily=3",
        {
            "jan5": "2024-01-05T12:00",
            "jan4-late": "2024-01-04T22:00",
            "jan4-early": "2024-01-04T07:00",
            "jan2": "2024-01-02T09:00",
            "jan1-late": "2024-01-01T20:00",
            "jan1-early": "2024-01-01T08:00",
        },
        NOW,
        {"jan5", "jan4-late", "jan2"},
    ),
    ("daily on the history", "daily=2", HISTORY, NOW, {"A", "C"}),
    ("daily more than there are", "daily=100", HISTORY, NOW, set(HISTORY) - {"B"}),
    (
        "weekly uses ISO weeks across the new year",
        "weekly=2",
        {
            "2025-W01-sun": "2025-01-05T10:00",
            "2025-W01-mon": "2024-12-30T10:00",
            "2024-W52-sun": "2024-12-29T10:00",
            "2024-W52-mon": "2024-12-23T10:00",
            "2024-W51-sun": "2024-12-22T10:00",
        },
        NOW,
        {"2025-W01-sun", "2024-W52-sun"},
    ),
    (
        "weekly: Monday starts a new week",
        "weekly=2",
        {"mon": "2024-06-10T00:00", "sun": "2024-06-09T23:59", "sat": "2024-06-08T12:00"},
        NOW,
        {"mon", "sun"},
    ),
    (
        "weekly: Monday to Sunday is one week",
        "weekly=2",
        {"sun": "2024-06-16T23:59", "mon": "2024-06-10T00:00", "prev-sun": "2024-06-09T12:00"},
        NOW,
        {"sun", "prev-sun"},
    ),
    ("monthly on the history", "monthly=3", HISTORY, NOW, {"A", "E", "G"}),
    (
        "monthly: leap day",
        "monthly=2",
        {"mar31": "2024-03-31T00:00", "mar1": "2024-03-01T00:00", "feb29": "2024-02-29T23:00", "jan": "2024-01-15"},
        NOW,
        {"mar31", "feb29"},
    ),
    ("yearly on the history", "yearly=2", HISTORY, NOW, {"A", "H"}),
    ("yearly more than there are", "yearly=10", HISTORY, NOW, {"A", "H", "I"}),
    (
        "days: within N days of now, boundary included",
        "days=7",
        {
            "hour-ago": NOW - timedelta(hours=1),
            "exactly-7d": NOW - timedelta(days=7),
            "7d-and-1s": NOW - timedelta(days=7, seconds=1),
            "month-ago": NOW - timedelta(days=30),
        },
        NOW,
        {"hour-ago", "exactly-7d"},
    ),
    (
        "days counts from now, not from the newest snapshot",
        "days=30",
        HISTORY,
        t("2024-04-01T00:00"),
        {"A", "B", "C", "D"},
    ),
    (
        "combination: a snapshot is kept if any rule keeps it",
        "last=1,daily=2,monthly=3",
        HISTORY,
        NOW,
        {"A", "C", "E", "G"},
    ),
    (
        "combination with days",
        "days=2,yearly=3",
        HISTORY,
        t("2024-03-11T00:00"),
        {"A", "B", "C", "H", "I"},
    ),
    (
        "nothing kept by the rules: the newest is kept",
        "days=1",
        HISTORY,
        NOW,
        {"A"},
    ),
]


@pytest.mark.parametrize("name,policy,history,now,expected", CASES, ids=[c[0] for c in CASES])
def test_apply_retention(name, policy, history, now, expected):
    snapshots = [snap(i, when) for i, when in history.items()]
    random.Random(name).shuffle(snapshots)  # input order does not matter
    decisions = apply_retention(snapshots, RetentionPolicy.parse(policy), now, tz=UTC)
    assert kept(decisions) == expected
    # every snapshot exactly once, newest first, keep iff a reason
    assert sorted(d.snapshot.id for d in decisions) == sorted(history)
    times = [d.snapshot.time for d in decisions]
    assert times == sorted(times, reverse=True)
    for d in decisions:
        assert d.keep == bool(d.reasons)


def test_reasons_name_the_rules():
    snapshots = [snap(i, when) for i, when in HISTORY.items()]
    decisions = {
        d.snapshot.id: d
        for d in apply_retention(snapshots, RetentionPolicy.parse("last=1,daily=2,monthly=3"), NOW, UTC)
    }
    assert decisions["A"].reasons == ("last", "daily", "monthly")
    assert decisions["C"].reasons == ("daily",)
    assert decisions["E"].reasons == ("monthly",)
    assert decisions["B"].reasons == ()
    assert not decisions["B"].keep
    days = apply_retention(snapshots, RetentionPolicy(days=30), t("2024-03-11T00:00"), UTC)
    assert days[0].reasons == ("within 30 days",)


def test_newest_is_kept_when_nothing_else_is():
    snapshots = [snap(i, when) for i, when in HISTORY.items()]
    decisions = apply_retention(snapshots, RetentionPolicy(days=1), NOW, UTC)
    assert kept(decisions) == {"A"}
    assert decisions[0].snapshot.id == "A"
    assert "newest" in decisions[0].reasons[0]


def test_allow_empty_forgets_everything():
    snapshots = [snap(i, when) for i, when in HISTORY.items()]
    decisions = apply_retention(snapshots, RetentionPolicy(days=1), NOW, UTC, allow_empty=True)
    assert len(decisions) == len(HISTORY)
    assert kept(decisions) == set()
    assert all(d.reasons == () for d in decisions)


def test_allow_empty_does_not_change_what_rules_keep():
    snapshots = [snap(i, when) for i, when in HISTORY.items()]
    policy = RetentionPolicy.parse("daily=2")
    assert kept(apply_retention(snapshots, policy, NOW, UTC, allow_empty=True)) == {"A", "C"}


def test_no_snapshots():
    assert apply_retention([], RetentionPolicy(last=3), NOW, UTC) == []
    assert apply_retention([], RetentionPolicy(last=3), NOW, UTC, allow_empty=True) == []


@pytest.mark.parametrize("order", [["a", "b"], ["b", "a"]])
def test_equal_times_are_ordered_by_id(order):
    same = "2024-05-01T00:00"
    decisions = apply_retention([snap(i, same) for i in order], RetentionPolicy(last=1), NOW, UTC)
    assert [d.snapshot.id for d in decisions] == ["b", "a"]
    assert kept(decisions) == {"b"}


@pytest.mark.parametrize(
    "tz,expected",
    [
        (UTC, {"jan2-0030", "jan1-2330"}),
        (timezone(timedelta(hours=2)), {"jan2-0030", "jan1-1200"}),  # both late ones are on Jan 2 there
        (timezone(timedelta(hours=-5)), {"jan2-0030", "dec31"}),  # both late ones are on Jan 1 there
    ],
    ids=["utc", "utc+2", "utc-5"],
)
def test_buckets_use_the_given_time_zone(tz, expected):
    snapshots = [
        snap("jan2-0030", "2024-01-02T00:30"),
        snap("jan1-2330", "2024-01-01T23:30"),
        snap("jan1-1200", "2024-01-01T12:00"),
        snap("dec31", "2023-12-31T20:00"),
    ]
    assert kept(apply_retention(snapshots, RetentionPolicy(daily=2), NOW, tz)) == expected


# ---- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("days=30", RetentionPolicy(days=30)),
        ("last=1", RetentionPolicy(last=1)),
        (
            "last=3,daily=7,weekly=4,monthly=6,yearly=1",
            RetentionPolicy(last=3, daily=7, weekly=4, monthly=6, yearly=1),
        ),
        ("hourly=24,days=2", RetentionPolicy(hourly=24, days=2)),
        (" last = 3 , daily=7 ", RetentionPolicy(last=3, daily=7)),
        ("days=0,last=1", RetentionPolicy(last=1)),
        ("yearly=007", RetentionPolicy(yearly=7)),
        ("days=100000", RetentionPolicy(days=100000)),
    ],
)
def test_parse_valid(text, expected):
    policy = RetentionPolicy.parse(text)
    assert policy == expected
    assert not policy.empty
    assert RetentionPolicy.parse(policy.describe()) == policy


@pytest.mark.parametrize(
    "text,problem",
    [
        ("foo=1", "'foo=1' is not one of"),
        ("Days=1", "'Days=1' is not one of"),
        ("keep-daily=1", "is not one of"),
        ("days", "'days' is not one of"),
        ("weekly:4", "'weekly:4' is not one of"),
        ("", "is not one of"),
        ("days=1,", "'' is not one of"),
        ("days=1,,last=2", "'' is not one of"),
        ("days=abc", "days needs a whole number, got 'abc'"),
        ("days=", "days needs a whole number, got ''"),
        ("days=1.5", "days needs a whole number, got '1.5'"),
        ("days=1e3", "got '1e3'"),
        ("last=+2", "last needs a whole number, got '+2'"),
        ("last=-1", "last needs a whole number, got '-1'"),
        ("days=-30", "got '-30'"),
        ("days=1,days=2", "days given twice"),
        ("last=1,daily=2,last=1", "last given twice"),
        ("days=0", "keeps nothing"),
        ("days=0,last=0,yearly=0", "keeps nothing"),
    ],
)
def test_parse_errors_name_the_problem(text, problem):
    with pytest.raises(InvalidRequest) as info:
        RetentionPolicy.parse(text)
    message = str(info.value)
    assert problem in message
    assert repr(text) in message
    assert info.value.code == "INVALID_REQUEST"
    assert info.value.http_status == 400


@pytest.mark.parametrize("text", ["days=²", "last=3²"])
def test_parse_refuses_non_ascii_digits(text):
    with pytest.raises(InvalidRequest, match="whole number"):
        RetentionPolicy.parse(text)


@pytest.mark.parametrize(
    "kwargs",
    [{"days": -1}, {"last": -5}, {"daily": True}, {"weekly": 1.0}, {"monthly": "3"}, {"yearly": None}],
)
def test_policy_values_must_be_whole_numbers(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InvalidRequest, match=f"retention {name} must be a whole number"):
        RetentionPolicy(**kwargs)


def test_empty_and_describe():
    assert RetentionPolicy().empty
    assert RetentionPolicy().describe() == ""
    assert not RetentionPolicy(yearly=1).empty
    assert RetentionPolicy(last=2, monthly=6).describe() == "last=2,monthly=6"


def test_safety_snapshots_of_a_restore_are_kept_seven_days():
    from datetime import UTC, datetime, timedelta

    from sidecar.repo.retention import RetentionPolicy, apply_retention

    now = datetime(2026, 11, 26, 12, tzinfo=UTC)

    def snap(days_ago: float, tags: list[str]):
        from sidecar.repo.snapshot import SnapshotRecord

        return SnapshotRecord(
            backup_id=f"b{days_ago}", app_id="a", app_name="a", time=now - timedelta(days=days_ago),
            backup_type="full", hostname="h", sources=[], tags=tags,
        )  # fmt: skip

    snaps = [snap(0, []), snap(3, ["pre-restore"]), snap(8, ["pre-restore"]), snap(2, [])]
    decisions = {d.snapshot.backup_id: d for d in apply_retention(snaps, RetentionPolicy(last=1), now)}
    assert decisions["b0"].keep and not decisions["b2"].keep
    assert decisions["b3"].keep and "safety snapshot" in decisions["b3"].reasons[0]
    assert not decisions["b8"].keep
