"""Schemathesis against our own openapi.json, served by a real HTTP server (waitress).

Every operation of the document is called with data generated from it, valid
(positive) and invalid (negative), with random path parameters and with ones
that exist (an app of a faked Docker host, a real backup, a schedule, a job).
Every response must not be a 5xx and must match the document: a documented
status, the documented content type and headers, a body valid against the
schema. A wrong or missing key must get the documented 401 everywhere.

Failures are collected over all operations and asserted at the end, so one
run reports every mismatch, each with a curl command to replay it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sidecar.api import PREFIX
from tests.api.conftest import API_KEY, ApiEnv, fake_host, sqlite_env

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 25  # per operation, generation mode and kind of path parameters
AUTH_EXAMPLES = 5
RUN = settings(
    max_examples=EXAMPLES,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is recorded, not raised
    suppress_health_check=list(HealthCheck),
)


# valid bodies sent as they are (generated ones rarely satisfy the rules between fields), so the
# 201s and 200s of the operations that take a body are checked too
VALID_BODIES: dict[str, list[dict[str, Any]]] = {
    "POST /schedules": [
        {"app_id": "shop"},
        {"app_id": "shop", "frequency": "weekly", "time": "02:30", "day_of_week": 0, "retention_days": 7},
        {"app_id": "blog", "frequency": "monthly", "day_of_month": 31, "include_uploads": False},
        {"app_id": "gone", "frequency": "cron", "cron": "@hourly", "enabled": False, "backup_type": "incremental"},
    ],
    "PUT /schedules/{schedule_id}": [{"time": "23:59"}, {"enabled": False, "retention_days": 36500}, {}],
    "POST /{app_id}": [{"backup_type": "full", "description": "from schemathesis", "include_database": False}],
    "POST /restore/{app_id}/{backup_id}": [{"stop_app": False, "volumes": ["data"], "safety_snapshot": False}],
}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    """Overrides conftest's `env` (so its `live_server` serves this one): apps from a
    faked Docker host, but no Docker client, so a job that would touch Docker fails."""
    yield from sqlite_env(tmp_path, registry=fake_host())


@pytest.fixture
def schema(live_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}{PREFIX}/openapi.json", headers={"X-API-Key": API_KEY})


class Failures:
    """Every distinct failure: operation, check title; the first example of each is kept."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], str] = {}

    def add(self, case: Case, title: str, detail: str) -> None:
        detail = detail.removeprefix(title).strip()
        self.found.setdefault((case.operation.label, title), f"{detail}\n    {case.as_curl_command()}")

    def report(self) -> str:
        return "\n".join(f"{label}: {title}\n    {detail}" for (label, title), detail in sorted(self.found.items()))


def _operations(schema: schemathesis.BaseSchema) -> list[APIOperation]:
    operations = [result.ok() for result in schema.get_all_operations()]
    # deleting the known backup and schedule comes last: the other operations see them first
    return sorted(operations, key=lambda op: op.method.lower() == "delete")


def _run(
    operation: APIOperation,
    mode: GenerationMode,
    test: Callable[[Case], None],
    examples: int = EXAMPLES,
    **fixed: Any,
) -> None:
    @given(case=operation.as_strategy(mode, **fixed))
    @settings(RUN, max_examples=examples)
    def run(case: Case) -> None:
        test(case)

    try:
        run()
    except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE, operation.label


def _call(failures: Failures, case: Case, headers: dict[str, str]) -> requests.Response | None:
    """The case sent with `headers` (they replace any the case was generated with); None if it got no answer."""
    try:
        return case.call(headers=headers, timeout=60)
    except requests.RequestException as exc:
        failures.add(case, "no response", f"{type(exc).__name__}: {exc}")
        return None


def _check(failures: Failures, case: Case, response: requests.Response, headers: dict[str, str]) -> None:
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except BaseExceptionGroup as group:
        for failure in group.exceptions:
            failures.add(case, getattr(failure, "title", type(failure).__name__), str(failure).strip())
    except AssertionError as failure:
        failures.add(case, getattr(failure, "title", type(failure).__name__), str(failure).strip())


def _validate(failures: Failures, headers: dict[str, str]) -> Callable[[Case], None]:
    def test(case: Case) -> None:
        response = _call(failures, case, headers)
        if response is not None:
            _check(failures, case, response, headers)

    return test


def _known(env: ApiEnv, client: Callable[..., requests.Response]) -> dict[str, list[str]]:
    """Path parameters that exist: apps (one with a label error), a backup, schedules (an API
    one and label ones) and a job."""
    backup_id = env.back_up("shop", b"shop data")
    made = client("POST", "/schedules", json={"app_id": "shop", "frequency": "cron", "cron": "15 4 * * 1-5"})
    assert made.status_code == 201, made.text
    job = client("POST", f"/snapshots/{backup_id}/verify", params={"wait": "true"})
    assert job.status_code == 200, job.text
    return {
        "app_id": ["shop", "blog"],
        "backup_id": [backup_id],
        "schedule_id": [made.json()["data"]["schedule_id"], "label:shop", "label:blog"],
        "job_id": [job.json()["data"]["job_id"]],
    }


def test_every_operation_answers_as_documented(env: ApiEnv, live_server: str, schema: schemathesis.BaseSchema) -> None:
    def client(method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method, f"{live_server}{PREFIX}{path}", headers={"X-API-Key": API_KEY}, timeout=60, **kwargs
        )

    known = _known(env, client)
    failures = Failures()
    key = {"X-API-Key": API_KEY}
    test = _validate(failures, key)
    operations = _operations(schema)
    assert len(operations) >= 15
    bodies = dict(VALID_BODIES)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation, mode, test, headers=key)  # the key is given: negative data is in the request itself
        # again with parameters that exist, so the 200s are checked too
        names = sorted(p.name for p in operation.path_parameters)
        query: dict[str, str] = {}
        if operation.method.lower() == "post" and "app_id" in names:
            query = {"wait": "false"}  # a backup or restore that waits would wait for a job that needs Docker: 503
        for n, values in enumerate(itertools.product(*(known[name] for name in names))):
            fixed: dict[str, Any] = {
                "headers": key,
                "query": query,
                "path_parameters": dict(zip(names, values, strict=True)),
            }
            if names:
                _run(operation, GenerationMode.POSITIVE, test, **fixed)
            if n == 0:  # the valid bodies with the first parameters that exist
                for body in bodies.pop(f"{operation.method.upper()} {operation.path.removeprefix(PREFIX)}", []):
                    _run(operation, GenerationMode.POSITIVE, test, examples=1, body=body, **fixed)
    assert not bodies, f"no such operations: {', '.join(bodies)}"
    assert not failures.found, f"{len(failures.found)} failure(s):\n{failures.report()}"


def test_every_operation_refuses_a_wrong_or_missing_key_as_documented(schema: schemathesis.BaseSchema) -> None:
    for headers in ({"X-API-Key": API_KEY + "x"}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}, {}):
        _refused(schema, headers)


def _refused(schema: schemathesis.BaseSchema, headers: dict[str, str]) -> None:
    failures = Failures()

    def test(case: Case) -> None:
        if case.headers:  # a key generated from the security scheme would replace the one under test
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "x-api-key"}
        response = _call(failures, case, headers)
        if response is None:
            return
        if response.status_code != 401 or response.json().get("error") != "UNAUTHORIZED":
            failures.add(case, f"not refused: {response.status_code}", response.text[:200])
        _check(failures, case, response, headers)

    operations = [op for op in _operations(schema) if op.path != "/healthz"]
    for operation in operations:
        _run(operation, GenerationMode.POSITIVE, test, examples=AUTH_EXAMPLES)
    # schemathesis leaves out the operation that serves the document itself: every documented
    # operation once more, plainly, against the document as served
    base = schema.get_base_url().rstrip("/")
    for path, item in schema.raw_schema["paths"].items():
        for method, operation_doc in item.items():
            if method == "parameters" or operation_doc.get("security") == []:
                continue
            url = base + path.replace("{", "").replace("}", "")
            response = requests.request(method, url, headers=headers, timeout=60)
            where = f"{method.upper()} {path}"
            if response.status_code != 401 or response.json().get("error") != "UNAUTHORIZED":
                failures.found[(where, f"not refused: {response.status_code}")] = response.text[:200]
            if "401" not in operation_doc["responses"]:
                failures.found[(where, "401 not documented")] = ", ".join(operation_doc["responses"])
    assert not failures.found, f"with {headers}: {len(failures.found)} failure(s):\n{failures.report()}"
