"""Prometheus metrics on /metrics: the names of DESIGN.md §6, per app, the catalog's
last successes at scrape time (so they survive a restart), no key needed."""

from __future__ import annotations

from datetime import UTC

from prometheus_client.parser import text_string_to_metric_families

from sidecar.api import create_app
from sidecar.catalog.models import Backup
from sidecar.metrics import Metrics
from tests.api.conftest import API_KEY


def scrape(env, metrics: Metrics) -> dict[tuple[str, tuple], float]:
    env.ops.metrics = metrics
    response = create_app(env.ops, API_KEY).test_client().get("/metrics")  # no X-API-Key
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_last_success_and_size_come_from_the_catalog(env):
    ids = {app: env.back_up(app, app.encode() * 10) for app in ("wp", "gitea")}
    newer = env.back_up("wp", b"newer content, longer")
    samples = scrape(env, Metrics(repository_size=lambda: 123_456))
    row = Backup.get_by_id(newer)
    assert (
        samples[("backup_last_success_timestamp_seconds", (("app_id", "wp"),))]
        == row.completed_at.replace(tzinfo=UTC).timestamp()
    )
    assert samples[("backup_size_bytes", (("app_id", "wp"),))] == len(b"newer content, longer")
    assert samples[("backup_size_bytes", (("app_id", "gitea"),))] == len(b"gitea" * 10)
    assert samples[("backup_in_progress", (("app_id", "wp"),))] == 0
    assert samples[("repository_size_bytes", ())] == 123_456
    assert ids["wp"] != newer
    # a new process (fresh counters) still knows the last successes
    again = scrape(env, Metrics())
    assert again[("backup_last_success_timestamp_seconds", (("app_id", "gitea"),))] > 0


def test_counters_histogram_and_in_progress(env):
    metrics = Metrics()
    metrics.backup_started("wp", "incremental")
    during = scrape(env, metrics)
    assert during[("backup_in_progress", (("app_id", "wp"),))] == 1
    assert during[("backup_total", (("app_id", "wp"), ("type", "incremental")))] == 1
    metrics.backup_finished("wp", "incremental", 12.5, 4096)
    metrics.backup_started("wp", "full")
    metrics.backup_finished("wp", "full", 700.0, None)
    metrics.restore_started("wp")
    metrics.restore_finished("wp", ok=True)
    metrics.restore_started("wp")
    metrics.restore_finished("wp", ok=False)
    after = scrape(env, metrics)
    wp_inc = (("app_id", "wp"), ("type", "incremental"))
    wp_full = (("app_id", "wp"), ("type", "full"))
    assert after[("backup_success_total", wp_inc)] == 1 and after[("backup_failed_total", wp_full)] == 1
    assert after[("backup_added_bytes_total", (("app_id", "wp"),))] == 4096
    assert after[("backup_duration_seconds_count", wp_inc)] == 1
    assert after[("backup_duration_seconds_sum", wp_full)] == 700.0
    assert after[("backup_duration_seconds_bucket", (*wp_inc[:1], ("le", "15.0"), wp_inc[1]))] == 1
    assert after[("restore_total", (("app_id", "wp"),))] == 2
    assert after[("restore_success_total", (("app_id", "wp"),))] == 1
    assert after[("restore_failed_total", (("app_id", "wp"),))] == 1
    assert after[("backup_in_progress", (("app_id", "wp"),))] == 0


def test_a_failing_repository_size_does_not_fail_the_scrape(env):
    def away() -> int:
        raise OSError("storage away")

    samples = scrape(env, Metrics(repository_size=away))
    value = samples[("repository_size_bytes", ())]
    assert value != value  # NaN: unknown, and the scrape still answered


def test_each_instance_has_its_own_registry(env):
    a, b = Metrics(), Metrics()
    a.backup_started("x", "full")
    assert scrape(env, b).get(("backup_total", (("app_id", "x"), ("type", "full")))) is None
