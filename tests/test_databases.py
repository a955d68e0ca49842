"""Dump and load commands per engine, their credential prologue (run for real in `sh`), and the
exec stream handling with a fake Docker client (MongoDB is not in Debian: this is its coverage)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from sidecar.databases import (
    MYSQL_TRAILER,
    POSTGRES_TRAILER,
    dump_plan,
    fingerprint_command,
    fingerprint_valid,
    load_command,
    redis_cli,
    redis_env,
    source_name,
)
from sidecar.docker.execs import ExecStream
from sidecar.errors import BackupCreateFailed
from sidecar.jobs.dumps import _check
from sidecar.labels import DbSpec

SECRET = "s3cr3t 'quoted' $dollar"


def spec(engine: str, **kw) -> DbSpec:
    return DbSpec(
        container="db1",
        engine=engine,
        user=kw.get("user"),
        password_env=kw.get("password_env"),
        databases=kw.get("databases"),
    )


def test_mariadb_dump_command_and_trailer():
    plan = dump_plan(spec("mariadb"))
    argv = plan.command.argv
    assert argv[:2] == ("sh", "-c")
    assert argv[4:] == (
        "--user=root",
        "--single-transaction",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
        "--default-character-set=utf8mb4",
        "--all-databases",
    )
    env = plan.command.env
    assert env["W9_TOOLS"] == "mariadb-dump mysqldump"
    assert env["W9_PW_VARS"] == "MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD"
    assert env["W9_PW_FILE_VARS"] == "MARIADB_ROOT_PASSWORD_FILE MYSQL_ROOT_PASSWORD_FILE"
    assert env["W9_PW_TARGET"] == "MYSQL_PWD"
    assert (plan.trailer, plan.filename) == (MYSQL_TRAILER, "mariadb.sql")
    listed = dump_plan(spec("mysql", user="app", password_env="APP_PW", databases=("shop", "blog")))
    assert listed.command.argv[-3:] == ("--databases", "shop", "blog")
    assert "--user=app" in listed.command.argv
    assert listed.command.env["W9_PW_VARS"] == "APP_PW"
    load = load_command(spec("mariadb"))
    assert load.env["W9_TOOLS"] == "mariadb mysql" and "--binary-mode" in load.argv


def test_postgres_commands():
    plan = dump_plan(spec("postgres"))
    script = plan.command.argv[2]
    assert 'exec pg_dumpall -U "${POSTGRES_USER:-postgres}" --clean --if-exists' in script
    assert plan.trailer == POSTGRES_TRAILER
    assert plan.command.env["W9_PW_TARGET"] == "PGPASSWORD"
    some = dump_plan(spec("postgres", user="wiki", databases=("wiki",)))
    assert 'U="wiki"' in some.command.argv[2] and "pg_dump -U" in some.command.argv[2]
    assert some.command.argv[-1] == "wiki"
    assert "psql -X -q" in load_command(spec("postgres")).argv[2]


def test_redis_and_names():
    assert dump_plan(spec("redis")).command is None
    assert redis_env(spec("redis"))["W9_PW_TARGET"] == "REDISCLI_AUTH"
    assert redis_cli("LASTSAVE", env={}).argv[-1] == "LASTSAVE"
    assert source_name(spec("redis"), "cache") == "database:cache"
    assert source_name(spec("redis"), None) == "database:db1"


def run_command(command, env: dict, tmp_path: Path, tools: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a planned command with plain `sh` here, fake programs first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bindir / name).write_text("#!/bin/sh\n" + body)
        (bindir / name).chmod(0o755)
    full_env = {"PATH": f"{bindir}:/usr/bin:/bin", **env, **command.env}
    return subprocess.run(list(command.argv), env=full_env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("container_env", "expected"),
    [
        ({"MARIADB_ROOT_PASSWORD": SECRET, "MYSQL_ROOT_PASSWORD": "other"}, SECRET),
        ({"MYSQL_ROOT_PASSWORD": SECRET}, SECRET),
        ({"MARIADB_ROOT_PASSWORD_FILE": "PWFILE"}, SECRET),
        ({}, "<unset>"),
    ],
)
def test_password_is_resolved_inside_the_container_never_in_argv(container_env, expected, tmp_path):
    pwfile = tmp_path / "pw"
    pwfile.write_text(SECRET)
    env = {k: (str(pwfile) if v == "PWFILE" else v) for k, v in container_env.items()}
    fake = 'echo "argv: $*"; echo "pwd: ${MYSQL_PWD-<unset>}"\n'
    result = run_command(dump_plan(spec("mariadb")).command, env, tmp_path, {"mariadb-dump": fake})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == f"pwd: {expected}"
    assert SECRET not in lines[0]


@pytest.mark.parametrize("engine", ["mariadb", "mysql", "postgres"])
def test_fingerprint_query_gets_the_password_from_the_container_never_in_argv(engine, tmp_path):
    command = fingerprint_command(spec(engine))
    assert command is not None
    if engine == "postgres":
        env, tools = {"POSTGRES_PASSWORD": SECRET}, {"psql": 'echo "argv: $*"; echo "pwd: ${PGPASSWORD-<unset>}"\n'}
    else:
        env, tools = {"MYSQL_ROOT_PASSWORD": SECRET}, {"mysql": 'echo "argv: $*"; echo "pwd: ${MYSQL_PWD-<unset>}"\n'}
    result = run_command(command, env, tmp_path, tools)
    assert result.returncode == 0, result.stderr
    argv, pwd = result.stdout.splitlines()[:2]
    assert pwd == f"pwd: {SECRET}"
    assert SECRET not in argv and SECRET not in " ".join(command.argv)
    # the query itself reaches the client intact
    assert ("pg_current_wal_insert_lsn()" if engine == "postgres" else "Innodb_lsn_current") in argv


def test_engines_without_a_fingerprint_are_always_dumped():
    assert fingerprint_command(spec("redis")) is None
    assert fingerprint_command(spec("mongodb")) is None
    assert not fingerprint_valid("redis", "anything")


@pytest.mark.parametrize(
    ("engine", "output", "valid"),
    [
        ("mariadb", "Handler_delete\t0\nHandler_update\t2\nHandler_write\t5\nInnodb_lsn_current\t48062\n", True),
        ("mysql", "Com_create_view\t1\nHandler_delete\t0\nHandler_update\t2\nHandler_write\t5\n", True),
        ("mariadb", "Handler_update\t2\nHandler_write\t5\n", False),  # a counter missing: no fingerprint
        ("mariadb", "ERROR 1227 (42000): Access denied\n", False),
        ("mariadb", "", False),
        ("postgres", "0/1527270|2026-11-27 02:06:47.462943+00|f\n", True),
        ("postgres", "0/1527270|2026-11-27 02:06:47.462943+00|t\n", False),  # a standby
        ("postgres", "psql: error: connection to server failed\n", False),
    ],
)
def test_fingerprint_output_is_checked(engine, output, valid):
    assert fingerprint_valid(engine, output) is valid


def test_the_first_tool_present_runs_and_a_missing_tool_is_a_clear_error(tmp_path):
    command = dump_plan(spec("mysql")).command
    result = run_command(command, {}, tmp_path, {"mysqldump": 'echo "mysqldump ran"\n'})
    assert result.stdout.strip() == "mysqldump ran"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        list(command.argv),
        env={"PATH": str(empty), **command.env},
        capture_output=True,
        text=True,
        executable="/bin/sh",
    )
    assert result.returncode == 127
    assert "none of: mariadb-dump mysqldump found in the container" in result.stderr


def test_mongodump_gets_the_password_through_a_private_config_file(tmp_path):
    command = dump_plan(spec("mongodb")).command
    assert command.argv[:2] == ("sh", "-c")
    fake = (
        'echo "argv: $*"; for a in "$@"; do case $a in --config=*) f=${a#--config=};'
        ' ls -l "$f" | cut -c1-10; cat "$f";; esac; done; echo "$f" > ' + str(tmp_path / "cfgpath") + "\n"
    )
    env = {"MONGO_INITDB_ROOT_USERNAME": "admin", "MONGO_INITDB_ROOT_PASSWORD": SECRET, "TMPDIR": str(tmp_path)}
    result = run_command(command, env, tmp_path, {"mongodump": fake})
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("argv: --archive --username=admin --authenticationDatabase=admin --config=")
    assert SECRET not in out[0]
    assert out[1] == "-rw-------"
    assert out[2] == f'password: "{SECRET}"'
    assert not Path((tmp_path / "cfgpath").read_text().strip()).exists()  # removed afterwards

    plain = run_command(command, {}, tmp_path, {"mongodump": 'echo "argv: $*"\n'})
    assert plain.stdout.strip() == "argv: --archive"
    restore = run_command(load_command(spec("mongodb")), {}, tmp_path, {"mongorestore": 'echo "argv: $*"\n'})
    assert restore.stdout.strip() == "argv: --archive --drop"


class FakeAPI:
    """Just enough of docker's API for ExecStream: the exec's socket is one end of a socketpair."""

    def __init__(self, frames: list[tuple[int, bytes]], exit_code: int) -> None:
        self.frames = frames
        self.exit_code = exit_code
        self.created: dict = {}

    def exec_create(self, container, cmd, **kw):
        self.created = {"container": container, "cmd": cmd, **kw}
        return {"Id": "e1"}

    def exec_start(self, exec_id, socket=False):
        ours, theirs = _socketpair()

        def feed() -> None:
            for stream, data in self.frames:
                theirs.sendall(bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data)
            theirs.close()

        threading.Thread(target=feed).start()
        return ours

    def exec_inspect(self, exec_id):
        return {"Running": False, "ExitCode": self.exit_code}


def _socketpair():
    return socket.socketpair()


class FakeClient:
    def __init__(self, api: FakeAPI) -> None:
        self.api = api


def test_exec_stream_passes_stdout_keeps_stderr_and_the_tail():
    body = os.urandom(300_000)
    frames = [(1, body[:100_000]), (2, b"warning: x\n"), (1, body[100_000:]), (1, b"\n-- Dump completed on 2026\n")]
    api = FakeAPI(frames, 0)
    stream = ExecStream(FakeClient(api), "db1", ["mongodump", "--archive"], {"W9_TOOLS": "mongodump"})
    data = stream.read()
    assert data == body + b"\n-- Dump completed on 2026\n"
    assert stream.finish() == 0
    assert stream.error_text() == "warning: x"
    assert MYSQL_TRAILER in stream.tail and stream.size == len(data)
    assert api.created["environment"] == ["W9_TOOLS=mongodump"]


def test_dump_checks():
    plan = dump_plan(spec("mariadb"))
    _check("x", plan, 0, 10, b"...-- Dump completed on 2026\n", "")
    with pytest.raises(BackupCreateFailed, match=r"failed \(exit 2\): Access denied"):
        _check("x", plan, 2, 10, b"", "Access denied")
    with pytest.raises(BackupCreateFailed, match="wrote nothing"):
        _check("x", plan, 0, 0, b"", "")
    with pytest.raises(BackupCreateFailed, match="incomplete: it does not end with '-- Dump completed'"):
        _check("x", plan, 0, 10, b"INSERT INTO", "")
    mongo = dump_plan(spec("mongodb"))
    _check("x", mongo, 0, 10, b"anything", "")  # no trailer to check for an archive


# ---- an exact load: databases of the dump are dropped first (MySQL/MariaDB) -------------------

MYSQL_DUMP = (
    b"-- MariaDB dump 10.19\n"
    b"/*!40101 SET NAMES utf8mb4 */;\n"
    b"--\n-- Current Database: `mysql`\n--\n\n"
    b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mysql` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n\n"
    b"USE `mysql`;\n"
    b"INSERT INTO `db` VALUES " + b"('x','y')," * 2000 + b"('z','w');\n"
    b"--\n-- Current Database: `app`\n--\n\n"
    b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `app` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n\n"
    b"USE `app`;\n"
    b"INSERT INTO `items` VALUES (1,'CREATE DATABASE `fake`'),"
    + b"(2,'x')," * 3000
    + b"(3,'y');\n"
    + "CREATE DATABASE /*!32312 IF NOT EXISTS*/ `we``ird ü` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n".encode()
    + b"-- Dump completed"
)


def _expected_with_drops(dump: bytes, names: list[bytes]) -> bytes:
    out = dump
    for raw in names:
        line = b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `" + raw + b"`"
        out = out.replace(line, b"DROP DATABASE IF EXISTS `" + raw + b"`;\n" + line)
    return out


@pytest.mark.parametrize("block", [1, 7, 100, 4097, 5000, 1 << 20])
def test_mysql_dump_gets_drop_database_before_each_create(block: int) -> None:
    import io

    from sidecar.jobs.dumps import DatabaseNames

    names = DatabaseNames(io.BytesIO(MYSQL_DUMP), "mariadb")
    out = b""
    while chunk := names.read(block):
        assert len(chunk) <= block
        out += chunk
    # every CREATE DATABASE at a line start is noted (not the text in a row); all but the system
    # database are dropped first
    assert names.names == {"mysql", "app", "we`ird ü"}
    assert out == _expected_with_drops(MYSQL_DUMP, [b"app", "we``ird ü".encode()])
    assert names.dropped_first == ["app", "we`ird ü"]
    assert b"DROP DATABASE IF EXISTS `mysql`" not in out


def test_postgres_dump_passes_unchanged() -> None:
    import io

    from sidecar.jobs.dumps import DatabaseNames

    dump = b"DROP DATABASE IF EXISTS app;\nCREATE DATABASE app WITH TEMPLATE = template0;\n\\connect app\n" * 3
    names = DatabaseNames(io.BytesIO(dump), "postgres")
    assert names.read() == dump and names.names == {"app"} and names.dropped_first == []
