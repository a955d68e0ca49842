"""Retention: which snapshots of one app to keep (pure, restic's semantics).

A snapshot is kept if any rule keeps it:
- `days=N`: every snapshot taken within N days before `now`;
- `last=N`: the N newest;
- `hourly/daily/weekly/monthly/yearly=N`: walking from newest to oldest, the
  newest snapshot of each of the last N hours/days/ISO weeks/months/years that
  have snapshots.
The newest snapshot is never forgotten unless `allow_empty` is set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, tzinfo

from sidecar.errors import InvalidRequest
from sidecar.repo.snapshot import SnapshotRecord

_BUCKETS: dict[str, Callable[[datetime], tuple]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


@dataclass(frozen=True)
class RetentionPolicy:
    days: int = 0
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRequest(f"retention {f.name} must be a whole number >= 0, got {value!r}")

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """`days=30` or `last=3,daily=7,weekly=4,monthly=6,yearly=1`."""
        values: dict[str, int] = {}
        names = {f.name for f in fields(cls)}
        for part in text.split(","):
            key, sep, value = part.strip().partition("=")
            key = key.strip()
            if not sep or key not in names:
                raise InvalidRequest(f"retention {text!r}: {part.strip()!r} is not one of {', '.join(sorted(names))}=N")
            if key in values:
                raise InvalidRequest(f"retention {text!r}: {key} given twice")
            if not re.fullmatch(r"[0-9]{1,9}", value.strip()):
                raise InvalidRequest(f"retention {text!r}: {key} needs a whole number, got {value.strip()!r}")
            values[key] = int(value)
        policy = cls(**values)
        if policy.empty:
            raise InvalidRequest(f"retention {text!r} keeps nothing; use at least one rule above 0")
        return policy

    def describe(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name))


SAFETY_TAG = "pre-restore"  # made by an app restore before it changes anything
SAFETY_KEEP_DAYS = 7


@dataclass(frozen=True)
class Decision:
    snapshot: SnapshotRecord
    keep: bool
    reasons: tuple[str, ...]


def apply_retention(
    snapshots: Sequence[SnapshotRecord],
    policy: RetentionPolicy,
    now: datetime,
    tz: tzinfo | None = None,
    allow_empty: bool = False,
) -> list[Decision]:
    """Decisions for the snapshots of one app, newest first."""
    ordered = sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True)
    reasons: dict[int, list[str]] = {i: [] for i in range(len(ordered))}
    if policy.days:
        try:
            cutoff = now - timedelta(days=policy.days)
        except OverflowError:  # further back than a datetime reaches: every snapshot is within
            cutoff = datetime.min.replace(tzinfo=UTC)
        for i, snap in enumerate(ordered):
            if snap.time >= cutoff:
                reasons[i].append(f"within {policy.days} days")
    for i in range(min(policy.last, len(ordered))):
        reasons[i].append("last")
    for name, bucket_of in _BUCKETS.items():
        remaining = getattr(policy, name)
        previous = None
        for i, snap in enumerate(ordered):
            if remaining <= 0:
                break
            bucket = bucket_of(snap.time.astimezone(tz))
            if bucket != previous:
                reasons[i].append(name)
                remaining -= 1
                previous = bucket
    safety_cutoff = now - timedelta(days=SAFETY_KEEP_DAYS)
    for i, snap in enumerate(ordered):
        if SAFETY_TAG in snap.tags and snap.time >= safety_cutoff:
            reasons[i].append(f"safety snapshot of a restore (kept {SAFETY_KEEP_DAYS} days)")
    if ordered and not allow_empty and not reasons[0]:  # a safety snapshot kept alone must not cost the newest
        reasons[0].append("newest snapshot of the app (never forgotten without allow_empty)")
    return [Decision(s, bool(reasons[i]), tuple(reasons[i])) for i, s in enumerate(ordered)]
