"""Property-based (hypothesis) request bodies for every endpoint that takes one: any JSON
(wrong types, missing and unknown fields, huge strings, NUL, lone surrogates, nulls,
nested junk), any bytes under any content type. The API never crashes or answers
5xx, always answers in its envelope, and a 400 names the field at fault: one the
body got wrong when it got one wrong by itself, else one of the endpoint's fields
(a rule between fields), else `body` when the body is no JSON object."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from sidecar.api import MAX_BODY, PREFIX, create_app
from sidecar.api.openapi import SCHEMAS, spec
from sidecar.api.validation import MAX_DEPTH, json_depth
from sidecar.catalog.schedules import FREQUENCIES
from sidecar.repo.snapshot import BACKUP_TYPES
from tests.api.conftest import API_KEY, ApiEnv, fake_host, sqlite_env

PROPERTY = settings(
    max_examples=120,
    database=None,  # nothing written into the repository
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ERROR_CODES = set(SCHEMAS["Error"]["properties"]["error"]["enum"])
STORAGE = "local"  # the test repository's storage_location
HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
CRONS = ("15 4 * * 1-5", "0 3 * * *", "*/5 * * * *", "@daily", "@hourly", "@weekly")
NEVER = "0 0 30 2 *"  # valid, and never due


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    """Apps from a faked Docker host (shop, blog) and no Docker client: a body that passes
    reaches the app lookup (404 for an unknown app) or a job that fails later, never a 503."""
    yield from sqlite_env(tmp_path, registry=fake_host())


@pytest.fixture
def client(env: ApiEnv) -> FlaskClient:
    c = create_app(env.ops, API_KEY).test_client()
    c.environ_base["HTTP_X_API_KEY"] = API_KEY
    return c


# ---- what a field takes ------------------------------------------------------------------------


def _text_ok(value: object, max_length: int) -> bool:
    if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Field:
    """What one body field accepts (`ok`), and values to try (`values`: good ones and junk)."""

    ok: Callable[[Any], bool]
    values: st.SearchStrategy[Any]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
nasty_text = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), max_size=10).map(lambda s: s + "\x00"),  # NUL
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.integers(0, 3000).map(lambda n: "x" * n),  # around and past every length limit
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=5),  # digits of any script
)


def boolean() -> Field:
    return Field(lambda v: v is None or isinstance(v, bool), st.booleans() | json_values)


def text(max_length: int, good: st.SearchStrategy[str] | None = None) -> Field:
    values = nasty_text | json_values if good is None else good | nasty_text | json_values
    return Field(lambda v: v is None or _text_ok(v, max_length), values)


def choice(options: tuple[str, ...]) -> Field:
    return Field(lambda v: v is None or v in options, st.sampled_from(options) | nasty_text | json_values)


def integer(low: int, high: int) -> Field:
    def ok(v: Any) -> bool:
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and low <= v <= high)

    edges = st.sampled_from([low - 1, low, high, high + 1, 2**63, -(2**63), 1.0 * low])
    return Field(ok, st.integers(low, high) | edges | json_values)


def storage(allow_empty: bool) -> Field:
    accepted = {None, STORAGE, ""} if allow_empty else {None, STORAGE}
    return Field(lambda v: v in accepted, st.sampled_from([STORAGE, "", "s3", "LOCAL"]) | nasty_text)


def volumes() -> Field:
    def ok(v: Any) -> bool:
        return v is None or (isinstance(v, list) and all(isinstance(x, str) and x and _text_ok(x, 10**6) for x in v))

    return Field(ok, st.lists(st.sampled_from(["data", "volume:data", "nope"]) | nasty_text, max_size=3) | json_values)


times = st.builds("{:02d}:{:02d}".format, st.integers(0, 23), st.integers(0, 59))
crons = st.builds(
    lambda cron, before, after: before + cron.replace(" ", "  ") + after,
    st.sampled_from(CRONS),
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(["", " ", "\n"]),
)

BACKUP = {
    "backup_type": choice(BACKUP_TYPES),
    "description": text(1000),
    "include_database": boolean(),
    "storage_location": storage(allow_empty=False),
}
RESTORE = {
    "stop_app": boolean(),
    "restore_database": boolean(),
    "volumes": volumes(),
    "safety_snapshot": boolean(),
    "verify_data": boolean(),
}
SCHEDULE = {
    "app_id": text(255, st.sampled_from(["shop", "blog", "gone"])),
    "enabled": boolean(),
    "frequency": choice(FREQUENCIES),
    "time": Field(  # HH:MM of ASCII digits is checked with the other fields
        lambda v: v is None or (_text_ok(v, 5) and v.isascii()),
        text(5, times | st.sampled_from(["24:00", "3:00", "12:60", "", "0३:00"])).values,
    ),
    "day_of_week": integer(0, 6),
    "day_of_month": integer(1, 31),
    "cron": text(255, crons | st.sampled_from(["", NEVER, "0 0 3 * * *", "every day"])),
    "retention_days": integer(1, 36500),
    "backup_type": choice(BACKUP_TYPES),
    "include_database": boolean(),
    "include_uploads": boolean(),
    "storage_location": storage(allow_empty=True),
}
CROSS_FIELD = {"include_database, include_uploads"}  # a rule between fields may name two


def bodies(fields: dict[str, Field]) -> st.SearchStrategy[dict[str, Any]]:
    """The endpoint's fields, each present or not, with good values or junk, and sometimes unknown ones."""
    known = st.fixed_dictionaries({}, optional={name: field.values for name, field in fields.items()})
    extra = st.dictionaries(st.text(max_size=12) | st.sampled_from(["colour", "APP_ID", "app_id ", ""]), json_values)
    return st.builds(lambda k, e: {**e, **k}, known, st.one_of(st.just({}), extra))


# ---- the properties ----------------------------------------------------------------------------


def answer(response: Any) -> tuple[int, dict[str, Any]]:
    """The status and envelope, checked: never a 5xx, always the envelope of DESIGN.md §5."""
    status = response.status_code
    assert status < 500, response.get_data(as_text=True)
    assert response.mimetype == "application/json", response.mimetype
    doc = response.get_json()
    assert isinstance(doc, dict) and doc["code"] == status and isinstance(doc["message"], str), doc
    if status >= 400:
        assert set(doc) == {"code", "message", "error", "data"} and doc["data"] is None, doc
        assert doc["error"] in ERROR_CODES, doc
    else:
        assert set(doc) == {"code", "message", "data"}, doc
    return status, doc


def names(message: str, candidates: set[str]) -> bool:
    return any(message.startswith(f"{name}:") for name in candidates)


def check_body(
    response: Any, body: Any, fields: dict[str, Field], allowed: set[int], raw: bytes | None = None
) -> dict[str, Any]:
    """The property for one request whose body is `body` (a dict, or anything else sent as JSON)
    or `raw` bytes: returns the envelope."""
    status, doc = answer(response)
    message = doc["message"]
    if raw is not None:
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            body = None
    else:  # as the server reads it: an escaped surrogate pair, for one, arrives as one character
        body = json.loads(json.dumps(body))
    if json_depth(body) > MAX_DEPTH:
        assert status == 400 and message == f"body: nested deeper than {MAX_DEPTH} levels", doc
        return doc
    if not isinstance(body, dict):
        assert status == 400 and message.startswith("body: "), (raw[:200] if raw is not None else body, doc)
        return doc
    wrong = {name for name, value in body.items() if name not in fields or not fields[name].ok(value)}
    if wrong:  # a field wrong by itself is named, whichever else is wrong
        assert status == 400 and names(message, wrong), (body, sorted(wrong), doc)
    elif status == 400:  # a rule between fields: it names one of the endpoint's fields
        assert names(message, set(fields) | CROSS_FIELD), doc
    assert status in allowed, doc
    return doc


@st.composite
def wait_queries(draw: st.DrawFn) -> tuple[str, bool]:
    """A query string with `wait`, and whether that is a good one (a bad one is refused before the body)."""
    return draw(st.sampled_from([("", True), ("?wait=false", True), ("?wait=0", True), ("?wait=maybe", False)]))


def check_request(
    response: Any, wait_ok: bool, body: dict[str, Any], fields: dict[str, Field], allowed: set[int]
) -> dict[str, Any]:
    if wait_ok:
        return check_body(response, body, fields, allowed)
    status, doc = answer(response)
    assert status == 400 and doc["message"].startswith("wait: "), doc
    return doc


@given(app_id=st.sampled_from(["nope", "shop", "with%20space"]), query=wait_queries(), body=bodies(BACKUP))
@example(app_id="nope", query=("", True), body={"description": "\ud800"})
@example(app_id="nope", query=("", True), body={"description": "a\x00b"})
@example(app_id="nope", query=("", True), body={"include_database": [[[[[]]]]]})
@PROPERTY
def test_backup_bodies(client: FlaskClient, app_id: str, query: tuple[str, bool], body: dict[str, Any]) -> None:
    response = client.post(f"{PREFIX}/{app_id}{query[0]}", json=body)
    doc = check_request(response, query[1], body, BACKUP, {202, 400, 404, 409})
    if doc["code"] == 202:
        assert doc["data"]["job_id"] and doc["data"]["app_id"] == app_id, doc


@pytest.fixture
def shop_backup(env: ApiEnv) -> str:
    return env.back_up("shop")


@given(app_id=st.sampled_from(["nope", "shop"]), query=wait_queries(), body=bodies(RESTORE))
@example(app_id="shop", query=("", True), body={"volumes": ["data\ud800"]})
@example(app_id="shop", query=("", True), body={"volumes": []})
@PROPERTY
def test_restore_bodies(
    client: FlaskClient, shop_backup: str, app_id: str, query: tuple[str, bool], body: dict[str, Any]
) -> None:
    response = client.post(f"{PREFIX}/restore/{app_id}/{shop_backup}{query[0]}", json=body)
    check_request(response, query[1], body, RESTORE, {202, 400, 404, 409})


@given(body=bodies(SCHEDULE))
@example(body={"app_id": "shop", "frequency": "cron", "cron": " @daily"})
@example(body={"app_id": "shop", "frequency": "cron", "cron": "0 3 * * * "})
@example(body={"app_id": "shop", "time": "0३:00"})
@example(body={"app_id": "x\ud800"})
@example(body={"app_id": "x\x00"})
@PROPERTY
def test_schedule_bodies(client: FlaskClient, body: dict[str, Any]) -> None:
    doc = check_body(client.post(f"{PREFIX}/schedules", json=body), body, SCHEDULE, {201, 400})
    if doc["code"] == 201:
        made = doc["data"]
        assert HHMM.match(made["time"]), made  # as the document says: ASCII digits
        if made["cron"] is not None:
            assert made["cron"] == " ".join(made["cron"].split()), made  # stored as the scheduler reads it
        if made["enabled"] and made["cron"] != NEVER:
            assert made["next_run"] is not None, made  # every other schedule made here runs some day


def _schedule(client: FlaskClient) -> str:
    made = client.post(f"{PREFIX}/schedules", json={"app_id": "shop", "frequency": "cron", "cron": "@daily"})
    return answer(made)[1]["data"]["schedule_id"]


@given(body=bodies(SCHEDULE))
@example(body={"cron": " @daily", "frequency": "cron"})
@example(body={"time": "0३:00"})
@PROPERTY
def test_schedule_update_bodies(client: FlaskClient, body: dict[str, Any]) -> None:
    path = f"{PREFIX}/schedules/{_schedule(client)}"
    doc = check_body(client.put(path, json=body), body, SCHEDULE, {200, 400})
    if doc["code"] == 200:
        assert HHMM.match(doc["data"]["time"]), doc


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, str, bytes, str | None]:
    method, path, _ = draw(st.sampled_from(BODY_ENDPOINTS))
    raw = draw(
        st.one_of(
            st.binary(max_size=64),
            st.text(max_size=64).map(str.encode),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"{", b'"x"', b"\xef\xbb\xbf{}", b"NaN"]),
            st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),  # past the parser's depth
            st.integers(1, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
        )
    )
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/json; charset=latin-1",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/octet-stream",
                None,
            ]
        )
    )
    return method, path, raw, content_type


@given(request=raw_requests())
@example(request=("POST", f"{PREFIX}/schedules", b"[" * 100_000 + b"]" * 100_000, "application/json"))
@example(request=("POST", f"{PREFIX}/{{app_id}}", b'{"description": "\\ud800"}', "text/plain"))
@PROPERTY
def test_any_bytes_under_any_content_type(client: FlaskClient, request: tuple[str, str, bytes, str | None]) -> None:
    method, path, raw, content_type = request
    fields, allowed = next((f, a) for m, p, (f, a) in BODY_ENDPOINTS if (m, p) == (method, path))
    path = concrete(client, path)
    # as a stream: given `data`, werkzeug's test client would make up a multipart body of its own
    stream = io.BytesIO(raw)
    response = client.open(path, method=method, input_stream=stream, content_length=len(raw), content_type=content_type)
    check_body(response, None, fields, allowed, raw=raw)


@given(body=st.one_of(json_values, bodies(SCHEDULE)))
@example(body={})
@PROPERTY
def test_verify_takes_no_body(client: FlaskClient, body: Any) -> None:
    response = client.post(f"{PREFIX}/snapshots/backup_nope/verify", json=body)
    status, doc = answer(response)
    if body in (None, {}):  # None: `json=None` sends no body
        assert status == 404, doc
    elif isinstance(body, dict):
        received = json.loads(json.dumps(body))  # an escaped surrogate pair arrives as one character
        assert status == 400 and names(doc["message"], set(received)), (body, doc)
    else:
        assert status == 400 and doc["message"].startswith("body: "), doc


BODY_ENDPOINTS: list[tuple[str, str, tuple[dict[str, Field], set[int]]]] = [  # as the document names them
    ("POST", f"{PREFIX}/{{app_id}}", (BACKUP, {400, 404})),
    ("POST", f"{PREFIX}/restore/{{app_id}}/{{backup_id}}", (RESTORE, {400, 404})),
    ("POST", f"{PREFIX}/schedules", (SCHEDULE, {201, 400})),
    ("PUT", f"{PREFIX}/schedules/{{schedule_id}}", (SCHEDULE, {200, 400})),
    ("POST", f"{PREFIX}/snapshots/{{backup_id}}/verify", ({}, {400, 404})),
]


def concrete(client: FlaskClient, template: str) -> str:
    """The path with an unknown app and backup, and a schedule that exists."""
    path = template.replace("{app_id}", "nope").replace("{backup_id}", "backup_nope")
    return path.replace("{schedule_id}", _schedule(client)) if "{schedule_id}" in path else path


def test_a_body_past_the_limit_is_a_documented_413(client: FlaskClient) -> None:
    paths = spec()["paths"]
    for method, template, _ in BODY_ENDPOINTS:
        path = concrete(client, template)
        response = client.open(path, method=method, data=b" " * (MAX_BODY + 1), content_type="application/json")
        status, doc = answer(response)
        assert status == 413 and doc["error"] == "INVALID_REQUEST", (method, path, doc)
        assert "413" in paths[template][method.lower()]["responses"], (method, template)


PARAMETERS = [  # a path or query parameter of each kind: (method, path with {value}, its name)
    ("GET", f"{PREFIX}/snapshots/{{value}}", "backup_id"),
    ("DELETE", f"{PREFIX}/snapshots/{{value}}", "backup_id"),
    ("GET", f"{PREFIX}/snapshots/{{value}}/export", "backup_id"),
    ("POST", f"{PREFIX}/snapshots/{{value}}/verify", "backup_id"),
    ("POST", f"{PREFIX}/{{value}}", "app_id"),
    ("POST", f"{PREFIX}/restore/shop/{{value}}", "backup_id"),
    ("GET", f"{PREFIX}/jobs/{{value}}", "job_id"),
    ("GET", f"{PREFIX}/schedules/{{value}}", "schedule_id"),
    ("PUT", f"{PREFIX}/schedules/{{value}}", "schedule_id"),
    ("GET", f"{PREFIX}/snapshots?app_id={{value}}", "app_id"),
    ("GET", f"{PREFIX}/snapshots?status={{value}}", "status"),
    ("GET", f"{PREFIX}/snapshots?limit={{value}}", "limit"),
    ("GET", f"{PREFIX}/schedules?app_id={{value}}", "app_id"),
    ("POST", f"{PREFIX}/shop?wait={{value}}", "wait"),
]


@given(where=st.sampled_from(PARAMETERS), value=st.text(min_size=1, max_size=20))
@example(where=PARAMETERS[0], value="a\x00b")
@example(where=PARAMETERS[9], value="\x00")
@example(where=PARAMETERS[2], value="a/")  # %2F is a "/" to the router: was a 308 to "a/export" in HTML
@PROPERTY
def test_path_and_query_parameters(client: FlaskClient, where: tuple[str, str, str], value: str) -> None:
    """Any text in a parameter: never a 5xx; NUL (which PostgreSQL refuses) is a 400 naming it."""
    method, template, name = where
    path = template.replace("{value}", quote(value, safe=""))
    status, doc = answer(client.open(path, method=method))
    if "\x00" in value:
        assert status == 400 and doc["message"].startswith(f"{name}: "), doc
    elif status == 400:  # a read-only label schedule says "schedule label:...": the value names itself
        assert doc["message"].startswith((f"{name}: ", "schedule label:")), doc
