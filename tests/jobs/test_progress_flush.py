"""A job's last progress figures reach the catalog when it ends (they are written at most
every PROGRESS_EVERY seconds while it runs), from a thread and from a job process."""

from __future__ import annotations

from pathlib import Path

from sidecar.catalog import Catalog, open_catalog
from sidecar.catalog.db import close_catalog
from sidecar.jobs.runner import JobRunner


def test_the_final_bytes_are_recorded(tmp_path: Path) -> None:
    open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog = Catalog()
    runner = JobRunner(catalog, 1)
    try:
        job = catalog.create_job("backup", "app")

        def run(progress) -> dict:  # type: ignore[no-untyped-def]
            progress.set_phase("backing up")
            for _ in range(100):
                progress.add(1, 1000)  # within one PROGRESS_EVERY: written once at most, before the end
            return {}

        runner.submit(job.job_id, "app", run)
        runner.wait(job.job_id, 30)
        row = catalog.get_job(job.job_id)
        assert row.status == "completed" and row.bytes_done == 100_000
    finally:
        runner.shutdown()
        close_catalog()
