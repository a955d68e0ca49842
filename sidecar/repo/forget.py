"""`forget`: remove snapshot records by retention policy or by id.

Only the records go; the data they alone used is freed by `prune`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo

from sidecar.errors import InvalidRequest
from sidecar.repo.locks import SHARED
from sidecar.repo.repository import Repository
from sidecar.repo.retention import Decision, RetentionPolicy, apply_retention


def plan_forget(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    app_id: str | None = None,
    now: datetime | None = None,
    tz: tzinfo | None = None,
    allow_empty: bool = False,
) -> dict[str, list[Decision]]:
    """Decisions per app (newest first), without changing anything."""
    if policy.empty:
        raise InvalidRequest("no retention rule given (use --keep-days or --keep-last/-daily/...)")
    now = now or datetime.now(UTC)
    by_app: dict[str, list] = {}
    for snap in repo.list_snapshots(app_id):
        by_app.setdefault(snap.app_id, []).append(snap)
    return {app: apply_retention(snaps, policy, now, tz, allow_empty) for app, snaps in sorted(by_app.items())}


def remove_snapshots(repo: Repository, snapshot_ids: Iterable[str], lock_wait: float = 600.0) -> list[str]:
    removed = []
    with repo.lock(SHARED, "forget", lock_wait):
        for snapshot_id in snapshot_ids:
            repo.backend.delete(f"snapshots/{snapshot_id}")
            removed.append(snapshot_id)
    return removed
