"""A real PostgreSQL server for the catalog and API tests (fixtures imported by
tests/conftest.py), started here from Debian's
binaries (scripts/test-env installs them): a throw-away cluster listening on
127.0.0.1 only, password authentication, one fresh database per test. Without
the binaries these tests skip on a developer's machine and fail under CI=true.
`W9_TEST_POSTGRES_URL` points them at a server of your own instead."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.catalog.db import close_catalog

CI = os.environ.get("CI", "").lower() == "true"
PG_PASSWORD = "pg-" + secrets.token_hex(8)


def _unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"catalog tests need a PostgreSQL server under CI=true: {reason}")
    pytest.skip(reason)


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(user: pwd.struct_passwd | None):
    if user is None:
        return None

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL (without a database) of a running server."""
    external = os.environ.get("W9_TEST_POSTGRES_URL")
    if external:
        yield external.rstrip("/")
        return
    bindir = _bindir()
    if bindir is None:
        _unavailable("no PostgreSQL binaries (apt-get install postgresql)")
    owner = None
    if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres user to run the server as")
    base = Path(tempfile.mkdtemp(prefix="w9-pg-"))
    data = base / "data"
    pwfile = base / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if owner is not None:
        for p in (base, pwfile):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    demote = _as_owner(owner)
    run = {"preexec_fn": demote, "capture_output": True, "text": True, "cwd": base}
    init = subprocess.run(
        [f"{bindir}/initdb", "-D", str(data), "-U", "w9", "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"],
        **run,
    )
    if init.returncode != 0:
        _unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off"
    start = subprocess.run(
        [f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "-t", "60", "start"], **run
    )
    if start.returncode != 0:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        _unavailable(f"the server did not start: {start.stderr.strip()} {log[-500:]}")
    try:
        yield f"postgresql://w9:{PG_PASSWORD}@127.0.0.1:{port}"
    finally:
        subprocess.run([f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], **run)
        shutil.rmtree(base, ignore_errors=True)


def _admin(server: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{server}/postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"w9_{secrets.token_hex(6)}"
    _admin(postgres_server, f"CREATE DATABASE {name}")
    yield f"{postgres_server}/{name}"
    close_catalog()
    _admin(postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite (a file in tmp_path) and on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        close_catalog()
    else:
        yield request.getfixturevalue("postgres_url")
