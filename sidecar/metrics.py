"""Prometheus metrics (DESIGN.md §6) on a registry of their own per app instance.

Counters and the duration histogram count what this process did; the gauges
that must survive a restart (last success time and size of each app's last
backup) are read from the catalog at scrape time, and the repository's size is
measured at most once a minute."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.catalog.records import Catalog

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))
REPOSITORY_SIZE_EVERY = 60.0  # seconds


class _CatalogCollector(Collector):
    """Per app: time and size of its newest completed backup, from the catalog."""

    def __init__(self, in_progress: Callable[[], tuple[set[str], set[str]]]) -> None:
        self._in_progress = in_progress  # -> (running now, every app seen by this process)
        self._catalog = Catalog()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples (so registering does not query the catalog)."""
        return iter(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        last = GaugeMetricFamily(
            "backup_last_success_timestamp_seconds",
            "Unix time of the app's newest completed backup",
            labels=["app_id"],
        )
        size = GaugeMetricFamily("backup_size_bytes", "Size of the app's newest completed backup", labels=["app_id"])
        running = GaugeMetricFamily("backup_in_progress", "1 while a backup of the app runs", labels=["app_id"])
        return last, size, running

    def collect(self) -> Iterator[GaugeMetricFamily]:
        last, size, running = self._families()
        newest = self._catalog.newest_completed()
        for app_id, (completed, size_bytes) in sorted(newest.items()):
            last.add_metric([app_id], completed.timestamp())
            size.add_metric([app_id], size_bytes)
        busy, seen = self._in_progress()
        for app_id in sorted(set(newest) | busy | seen):
            running.add_metric([app_id], 1.0 if app_id in busy else 0.0)
        yield last
        yield size
        yield running


class Metrics:
    def __init__(self, repository_size: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ["app_id", "type"]
        self.backup_total = Counter("backup_total", "Backups started", labels, registry=r)
        self.backup_success_total = Counter("backup_success_total", "Backups completed", labels, registry=r)
        self.backup_failed_total = Counter("backup_failed_total", "Backups failed", labels, registry=r)
        self.backup_duration_seconds = Histogram(
            "backup_duration_seconds", "Duration of backups", labels, buckets=DURATION_BUCKETS, registry=r
        )
        self.backup_added_bytes_total = Counter(
            "backup_added_bytes_total", "Bytes backups added to the repository (after dedup)", ["app_id"], registry=r
        )
        self.backup_retries_total = Counter(
            "backup_retries_total", "Scheduled backups that failed and are tried again", labels, registry=r
        )
        self.scheduled_runs_total = Counter(
            "backup_scheduled_runs_total",
            "Scheduled runs by outcome: completed, retrying, failed, skipped (missed), coalesced (due while queued)",
            ["app_id", "outcome"],
            registry=r,
        )
        self.backup_forgotten_total = Counter(
            "backup_forgotten_total", "Snapshots forgotten by retention after scheduled backups", ["app_id"], registry=r
        )
        self.restore_total = Counter("restore_total", "Restores started", ["app_id"], registry=r)
        self.restore_success_total = Counter("restore_success_total", "Restores completed", ["app_id"], registry=r)
        self.restore_failed_total = Counter("restore_failed_total", "Restores failed", ["app_id"], registry=r)
        self._repo_size = Gauge("repository_size_bytes", "Stored size of the repository", registry=r)
        self._repository_size = repository_size
        self._repo_measured = 0.0
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._seen: set[str] = set()
        r.register(_CatalogCollector(self.backups_running))
        if repository_size is not None:
            self._repo_size.set_function(self.repository_size)

    # ---- what operations report ----------------------------------------------------------------

    def backup_started(self, app_id: str, backup_type: str) -> None:
        self.backup_total.labels(app_id, backup_type).inc()
        with self._lock:
            self._running.add(app_id)
            self._seen.add(app_id)

    def backup_finished(
        self, app_id: str, backup_type: str, seconds: float, added_bytes: int | None, retrying: bool = False
    ) -> None:
        """`added_bytes` None: the backup failed (`retrying`: the scheduler tries it again, so it
        counts in backup_retries_total, not yet in backup_failed_total)."""
        with self._lock:
            self._running.discard(app_id)
        self.backup_duration_seconds.labels(app_id, backup_type).observe(seconds)
        if added_bytes is None and retrying:
            self.backup_retries_total.labels(app_id, backup_type).inc()
        elif added_bytes is None:
            self.backup_failed_total.labels(app_id, backup_type).inc()
        else:
            self.backup_success_total.labels(app_id, backup_type).inc()
            self.backup_added_bytes_total.labels(app_id).inc(added_bytes)
        self._repo_measured = 0.0  # measure again at the next scrape

    def scheduled_run(self, app_id: str, outcome: str) -> None:
        """A scheduled run ended (completed, retrying, failed) or was skipped or coalesced."""
        self.scheduled_runs_total.labels(app_id, outcome).inc()

    def forgotten(self, app_id: str, count: int) -> None:
        self.backup_forgotten_total.labels(app_id).inc(count)

    def repository_changed(self) -> None:
        self._repo_measured = 0.0

    def restore_started(self, app_id: str) -> None:
        self.restore_total.labels(app_id).inc()

    def restore_finished(self, app_id: str, ok: bool) -> None:
        (self.restore_success_total if ok else self.restore_failed_total).labels(app_id).inc()
        self._repo_measured = 0.0

    def backups_running(self) -> tuple[set[str], set[str]]:
        """The apps being backed up now, and all this process has backed up."""
        with self._lock:
            return set(self._running), set(self._seen)

    # ---- repository size -----------------------------------------------------------------------

    def repository_size(self) -> float:
        """The repository's stored bytes, measured at most every REPOSITORY_SIZE_EVERY seconds
        (a listing of every object); NaN until a measurement succeeds."""
        now = time.monotonic()
        if self._repository_size is not None and now - self._repo_measured >= REPOSITORY_SIZE_EVERY:
            try:
                self._last_size = float(self._repository_size())
                self._repo_measured = now
            except Exception:  # a scrape must not fail because storage is slow or away
                return getattr(self, "_last_size", float("nan"))
        return getattr(self, "_last_size", float("nan"))

    def wsgi_app(self):  # type: ignore[no-untyped-def]
        return make_wsgi_app(self.registry)
