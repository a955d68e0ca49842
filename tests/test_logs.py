"""Log lines: JSON when asked, with the job and app of the job they were written in
(in the job's thread through JobRunner, in a job's own process through run_in_child)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from sidecar import logs
from sidecar.catalog import Catalog, open_catalog
from sidecar.catalog.db import close_catalog
from sidecar.jobs.runner import JobRunner


@pytest.fixture
def captured(monkeypatch):
    monkeypatch.setenv("BACKUP_LOG_FORMAT", "json")
    logs.setup(logging.INFO)
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    yield stream
    logs.setup(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_job_and_app_they_belong_to(captured):
    log = logging.getLogger("sidecar.test")
    log.info("outside")
    with logs.job_context("job_1", "blog"):
        log.warning("inside %s", "a job")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("with a traceback")
    out = lines(captured)
    assert out[0]["message"] == "outside" and "job_id" not in out[0] and out[0]["level"] == "info"
    assert (out[1]["message"], out[1]["job_id"], out[1]["app_id"], out[1]["level"]) == (
        "inside a job",
        "job_1",
        "blog",
        "warning",
    )
    assert out[2]["exception"].startswith("Traceback") and out[2]["time"].endswith("Z")


def test_a_job_run_by_the_runner_logs_with_its_ids(captured, tmp_path):
    open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        catalog = Catalog()
        runner = JobRunner(catalog, 1)
        job = catalog.create_job("backup", "shop")

        def fn(progress):
            logging.getLogger("sidecar.jobs").info("working")
            return {}

        runner.submit(job.job_id, "shop", fn).result(timeout=30)
        runner.shutdown()
    finally:
        close_catalog()
    working = [line for line in lines(captured) if line["message"] == "working"]
    assert working == [{**working[0], "job_id": job.job_id, "app_id": "shop"}]


def test_text_is_the_default_and_names_the_job(monkeypatch):
    monkeypatch.delenv("BACKUP_LOG_FORMAT", raising=False)
    logs.setup(logging.INFO)
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    with logs.job_context("job_9", "x"):
        logging.getLogger("t").info("plain")
    logs.setup(logging.WARNING)
    assert stream.getvalue().strip() == "INFO: plain [job job_9]"
