"""Database dumps streamed out of DB containers into a backup, and loaded back.

A dump goes from the `docker exec` output straight into the repository as a
stream source (`database:<service>`, one file): no temporary file, never the
whole dump in memory. It counts only if the command exits 0, wrote something,
and (mysql/mariadb, postgres) ends with its client's completion trailer;
otherwise the backup fails and no snapshot is written.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import re
import tarfile
import time
from collections.abc import Iterator
from typing import BinaryIO

import docker
import docker.errors

from sidecar.databases import (
    POSTGRES_HARMLESS,
    DumpPlan,
    dump_plan,
    fingerprint_command,
    fingerprint_valid,
    load_command,
    redis_cli,
    redis_env,
    source_name,
)
from sidecar.docker.apps import App, ContainerInfo
from sidecar.docker.execs import ExecStream, run_shell, run_with_stdin
from sidecar.errors import BackupCreateFailed, RestoreFailed
from sidecar.labels import DbSpec
from sidecar.repo.backup import BackupSession
from sidecar.repo.snapshot import SourceRecord

log = logging.getLogger(__name__)

REDIS_SAVE_TIMEOUT = 600.0
FINGERPRINT_TIMEOUT = 30.0


def _container(app: App, spec: DbSpec) -> ContainerInfo:
    container = app.container(spec.container)
    if container is None:
        raise BackupCreateFailed(f"app {app.app_id}: database container {spec.container} is gone")
    return container


def dump_databases(
    client: docker.DockerClient, app: App, session: BackupSession, reuse_unchanged: bool = False
) -> list[SourceRecord]:
    """Dump every `websoft9.backup.db` container of `app` into `session`. With `reuse_unchanged`
    (a restore's safety snapshot), a database whose server shows no write since the parent
    snapshot's dump of it began is carried over from that snapshot instead of dumped again."""
    records = []
    for spec in app.policy.databases:
        container = _container(app, spec)
        t0 = time.monotonic()
        fingerprint = read_fingerprint(client, container, spec)
        if reuse_unchanged and fingerprint is not None:
            reused = _reuse_unchanged(app, container, spec, session, fingerprint)
            if reused is not None:
                records.append(reused)
                continue
        record = dump_database(client, container, spec, session)
        record.fingerprint = fingerprint
        log.info(
            "app %s: %s dump of %s: %d bytes in %.1f s",
            app.app_id,
            spec.engine,
            spec.container,
            record.stats.bytes,
            time.monotonic() - t0,
        )
        records.append(record)
    return records


def read_fingerprint(client: docker.DockerClient, container: ContainerInfo, spec: DbSpec) -> str | None:
    """The server's change fingerprint (sidecar.databases) as a hash that also names the
    container and when it started; None when the engine has none or it cannot be read."""
    command = fingerprint_command(spec)
    if command is None:
        return None
    try:
        started = (client.api.inspect_container(container.id).get("State") or {}).get("StartedAt", "")
        result = run_shell_argv(client, container.id, list(command.argv), command.env, timeout=FINGERPRINT_TIMEOUT)
    except docker.errors.DockerException as exc:
        log.info("%s in %s: no change fingerprint (%s); it is dumped every time", spec.engine, container.name, exc)
        return None
    if result.exit_code != 0 or not fingerprint_valid(spec.engine, result.output):
        log.info(
            "%s in %s: no change fingerprint (exit %s: %s); it is dumped every time",
            spec.engine,
            container.name,
            result.exit_code,
            result.output[-200:].strip(),
        )
        return None
    text = "\n".join((spec.engine, container.id, started, result.output.strip()))
    return hashlib.sha256(text.encode()).hexdigest()


def _reuse_unchanged(
    app: App, container: ContainerInfo, spec: DbSpec, session: BackupSession, fingerprint: str
) -> SourceRecord | None:
    parent = session.parent
    if parent is None:  # a full backup has none: the app's latest snapshot
        snapshots = session.repo.list_snapshots(app.app_id)
        parent = snapshots[-1] if snapshots else None
    name = source_name(spec, container.service)
    if parent is None:
        return None
    previous = parent.source(name)
    if previous is None or previous.fingerprint != fingerprint or previous.engine != spec.engine:
        return None
    try:
        record = session.reuse_source(previous, parent.id)
    except BackupCreateFailed as exc:
        log.warning("app %s: %s; dumping %s again", app.app_id, exc, container.name)
        return None
    log.info(
        "app %s: %s in %s unchanged since the dump of snapshot %s began (no write since): its dump is reused",
        app.app_id,
        spec.engine,
        container.name,
        parent.id[:8],
    )
    return record


def dump_database(
    client: docker.DockerClient, container: ContainerInfo, spec: DbSpec, session: BackupSession
) -> SourceRecord:
    plan = dump_plan(spec)
    name = source_name(spec, container.service)
    if spec.engine == "redis":
        return _dump_redis(client, container, spec, plan, name, session)
    assert plan.command is not None
    what = f"{spec.engine} dump of {container.name}"
    try:
        stream = ExecStream(client, container.id, list(plan.command.argv), plan.command.env, plan.command.user)
    except docker.errors.APIError as exc:
        raise BackupCreateFailed(f"{what} could not start: {exc.explanation}") from None
    try:
        record = session.add_stream(name, stream, plan.filename, kind="database", engine=spec.engine)
        code = stream.finish()
    finally:
        stream.close()
    _check(what, plan, code, stream.size, stream.tail, stream.error_text())
    return record


def _check(what: str, plan: DumpPlan, code: int | None, size: int, tail: bytes, errors: str) -> None:
    detail = f": {errors}" if errors else ""
    if code != 0:
        raise BackupCreateFailed(f"{what} failed (exit {code}){detail}")
    if size == 0:
        raise BackupCreateFailed(f"{what} wrote nothing{detail}")
    if plan.trailer is not None and plan.trailer not in tail:
        raise BackupCreateFailed(f"{what} is incomplete: it does not end with {plan.trailer.decode()!r}{detail}")


def _redis_cli(client: docker.DockerClient, container: ContainerInfo, env: dict, *args: str) -> str:
    command = redis_cli(*args, env=env)
    result = run_shell_argv(client, container.id, list(command.argv), command.env)
    if result.exit_code != 0 or result.output.startswith(("ERR", "NOAUTH", "WRONGPASS")):
        raise BackupCreateFailed(f"redis-cli {' '.join(args)} in {container.name} failed: {result.output[-300:]}")
    return result.output


def run_shell_argv(client: docker.DockerClient, container: str, argv: list[str], env: dict, timeout: float = 120):
    """An argv run through run_shell's timeout and kill handling."""
    quoted = " ".join("'" + a.replace("'", "'\"'\"'") + "'" for a in argv)
    return run_shell(client, container, quoted, env=env, timeout=timeout)


def _dump_redis(
    client: docker.DockerClient,
    container: ContainerInfo,
    spec: DbSpec,
    plan: DumpPlan,
    name: str,
    session: BackupSession,
) -> SourceRecord:
    """BGSAVE, wait for a new LASTSAVE, then stream the RDB file."""
    env = redis_env(spec)
    deadline = time.monotonic() + REDIS_SAVE_TIMEOUT

    def persistence() -> str:
        if time.monotonic() > deadline:
            raise BackupCreateFailed(f"redis BGSAVE in {container.name} did not finish in {REDIS_SAVE_TIMEOUT:.0f} s")
        return _redis_cli(client, container, env, "INFO", "persistence")

    while "rdb_bgsave_in_progress:1" in persistence():  # someone else's save: it may predate our data
        time.sleep(0.2)
    before = int(_redis_cli(client, container, env, "LASTSAVE").split()[-1])
    # LASTSAVE has whole seconds: start our save in a later second than the last one, so that
    # its LASTSAVE is sure to be greater (a save within the same second would look like none)
    while int(time.time()) <= before:
        time.sleep(0.05)
    while True:
        started = _redis_cli(client, container, env, "BGSAVE")
        if "started" in started.lower() or "scheduled" in started.lower():
            break
        if "already in progress" not in started:
            raise BackupCreateFailed(f"redis BGSAVE in {container.name}: {started[-300:]}")
        while "rdb_bgsave_in_progress:1" in persistence():
            time.sleep(0.2)
    while True:
        info = persistence()
        lastsave = int(_redis_cli(client, container, env, "LASTSAVE").split()[-1])
        if "rdb_bgsave_in_progress:0" in info and lastsave > before:
            if "rdb_last_bgsave_status:ok" not in info:
                raise BackupCreateFailed(f"redis BGSAVE in {container.name} failed (rdb_last_bgsave_status)")
            break
        time.sleep(0.05)
    directory = _redis_cli(client, container, env, "CONFIG", "GET", "dir").splitlines()[-1].strip()
    filename = _redis_cli(client, container, env, "CONFIG", "GET", "dbfilename").splitlines()[-1].strip()
    path = posixpath.join(directory, filename)
    stream = ExecStream(client, container.id, ["cat", path], {})
    what = f"redis dump of {container.name} ({path})"
    try:
        record = session.add_stream(name, stream, plan.filename, kind="database", engine="redis")
        code = stream.finish()
    finally:
        stream.close()
    _check(what, plan, code, stream.size, b"", stream.error_text())
    return record


# ---- loading -------------------------------------------------------------------------------------


def load_database(
    client: docker.DockerClient, container: ContainerInfo, spec: DbSpec, dump: BinaryIO, exact: bool = False
) -> list[str]:
    """Load a dump made by `dump_database` into `container`; raises RestoreFailed with the client's words.
    With `exact`, databases the dump does not create are dropped afterwards (returned)."""
    if spec.engine == "redis":
        _load_redis(client, container, spec, dump)
        return []
    names = DatabaseNames(dump, spec.engine) if exact else None
    if names is not None:
        dump = names  # type: ignore[assignment]
    command = load_command(spec)
    what = f"loading the {spec.engine} dump into {container.name}"
    try:
        result = run_with_stdin(client, container.id, list(command.argv), dump, env=command.env, user=command.user)
    except docker.errors.APIError as exc:
        raise RestoreFailed(f"{what}: {exc.explanation}") from None
    if result.exit_code != 0:
        raise RestoreFailed(f"{what} failed (exit {result.exit_code}): {result.output[-1000:]}")
    if spec.engine == "postgres":
        errors = [
            line
            for line in result.output.splitlines()
            if re.search(r"\bERROR:", line) and not any(h in line for h in POSTGRES_HARMLESS)
        ]
        if errors:
            raise RestoreFailed(f"{what}: " + " | ".join(errors[:5]))
    if names is not None:
        return drop_other_databases(client, container, spec, names.names)
    return []


def _load_redis(client: docker.DockerClient, container: ContainerInfo, spec: DbSpec, dump: BinaryIO) -> None:
    """Stop redis, put the RDB file in place (archive API: works on a stopped container), start it."""
    env = redis_env(spec)
    try:
        directory = _redis_cli(client, container, env, "CONFIG", "GET", "dir").splitlines()[-1].strip()
        filename = _redis_cli(client, container, env, "CONFIG", "GET", "dbfilename").splitlines()[-1].strip()
        aof = _redis_cli(client, container, env, "CONFIG", "GET", "appendonly").splitlines()[-1].strip()
    except BackupCreateFailed as exc:
        raise RestoreFailed(str(exc)) from None
    if aof == "yes":
        raise RestoreFailed(f"{container.name} has appendonly=yes: redis would load its AOF, not the restored dump.rdb")
    size = getattr(dump, "size", None)
    if size is None:
        size = _remaining(dump)
    info = tarfile.TarInfo(filename)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    info.uid, info.gid = _owner_of(client, container, directory)
    client.api.stop(container.id, timeout=30)
    try:
        if not client.api.put_archive(container.id, directory, _tar_of_one(info, dump)):
            raise RestoreFailed(f"could not write {filename} into {container.name}")
    finally:
        client.api.start(container.id)


def _remaining(f: BinaryIO) -> int:
    here = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(here)
    return end - here


def _tar_of_one(info: tarfile.TarInfo, content: BinaryIO) -> Iterator[bytes]:
    """A tar stream of one file, made as it is sent (the file is never held whole)."""
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    sent = 0
    while sent < info.size:
        block = content.read(min(1 << 20, info.size - sent))
        if not block:
            raise RestoreFailed("the stored redis dump is shorter than recorded")
        sent += len(block)
        yield block
    yield b"\0" * (-info.size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


def _owner_of(client: docker.DockerClient, container: ContainerInfo, path: str) -> tuple[int, int]:
    result = run_shell(client, container.id, 'stat -c "%u %g" "$W9_PATH"', env={"W9_PATH": path}, timeout=30)
    try:
        uid, gid = (int(x) for x in result.output.split()[-2:])
        return uid, gid
    except ValueError:
        return 0, 0


# ---- making a load exact: readiness, and databases the dump does not have -------------------------

SYSTEM_DATABASES = {
    "mysql": {"information_schema", "mysql", "performance_schema", "sys"},
    "mariadb": {"information_schema", "mysql", "performance_schema", "sys"},
    "postgres": {"postgres", "template0", "template1"},
}
_CREATE_DATABASE = {
    "mysql": re.compile(rb"^CREATE DATABASE (?:/\*!32312 IF NOT EXISTS\*/ )?`((?:[^`]|``)+)`", re.M),
    "postgres": re.compile(rb'^CREATE DATABASE ("(?:[^"]|"")+"|[A-Za-z0-9_$]+)', re.M),
}


class DatabaseNames(io.RawIOBase):
    """Passes a dump through while noting the databases it creates.

    For MySQL/MariaDB it also writes `DROP DATABASE IF EXISTS` before each
    non-system database's `CREATE DATABASE` (what mysqldump's
    --add-drop-database would have written), so tables, views and routines made
    after the dump do not survive the restore: the result equals the snapshot.
    (pg_dumpall --clean drops and re-creates its databases itself.) Works line by
    line, holding at most one short line back; long lines pass straight through."""

    _HOLD = 4096  # a CREATE DATABASE line is shorter than this

    def __init__(self, dump: BinaryIO, engine: str) -> None:
        self._dump = dump
        self._pattern = _CREATE_DATABASE["postgres" if engine == "postgres" else "mysql"]
        self._drop = engine != "postgres"
        self._system = SYSTEM_DATABASES.get(engine, set())
        self._out = bytearray()  # ready to be read
        self._pending = b""  # the start of a line whose end has not come yet
        self._midline = False  # the next bytes continue a line already passed on
        self._eof = False
        self.names: set[str] = set()
        self.dropped_first: list[str] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        want = max(n, 1)
        while len(self._out) < want and not self._eof:
            data = self._dump.read(want)
            if not data:
                self._eof = True
                self._lines(self._pending)
                self._pending = b""
                break
            self._feed(data)
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def _feed(self, data: bytes) -> None:
        window = self._pending + data
        if self._midline:  # the rest of a long line: passed on as it is
            cut = window.find(b"\n")
            if cut < 0:
                self._out += window
                self._pending = b""
                return
            self._out += window[: cut + 1]
            window = window[cut + 1 :]
            self._midline = False
        cut = window.rfind(b"\n") + 1
        self._lines(window[:cut])
        self._pending = window[cut:]
        if len(self._pending) > self._HOLD and not self._pending.startswith(b"CREATE DATABASE"):
            self._out += self._pending  # a long line (rows of an INSERT): no CREATE DATABASE in it
            self._pending = b""
            self._midline = True

    def _lines(self, text: bytes) -> None:
        """Complete lines (or the last one at the end of the dump)."""
        done = 0
        for match in self._pattern.finditer(text):
            raw = match.group(1)
            if raw.startswith(b'"'):
                raw = raw[1:-1].replace(b'""', b'"')
            name = raw.replace(b"``", b"`").decode("utf-8", "replace")
            self.names.add(name)
            if self._drop and name not in self._system:
                self._out += text[done : match.start()]
                self._out += b"DROP DATABASE IF EXISTS `" + raw + b"`;\n"
                done = match.start()
                self.dropped_first.append(name)
        self._out += text[done:]


def _client(spec: DbSpec, *args: str) -> tuple[list[str], dict]:
    command = load_command(spec)
    if spec.engine == "postgres":
        script = command.argv[2].replace("exec psql -X -q", 'exec psql -X -q -A -t "$@"')
        return ["sh", "-c", script, "w9", *args], command.env
    return [*command.argv, *args], command.env


def _query(client: docker.DockerClient, container: ContainerInfo, spec: DbSpec, sql: str) -> str:
    flag = ["-c", sql] if spec.engine == "postgres" else ["-N", "-e", sql]
    argv, env = _client(spec, *flag)
    result = run_shell_argv(client, container.id, argv, env)
    if result.exit_code != 0:
        raise RestoreFailed(f"{spec.engine} in {container.name}: {result.output[-500:]}")
    return result.output


def wait_database_ready(client: docker.DockerClient, container: ContainerInfo, spec: DbSpec, timeout: float) -> None:
    """Wait until the database in `container` answers a query (after a start)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if spec.engine == "redis":
                if "PONG" in _redis_cli(client, container, redis_env(spec), "PING"):
                    return
            elif spec.engine == "mongodb":
                return  # no client to ask without credentials in argv; mongorestore retries itself
            else:
                _query(client, container, spec, "SELECT 1")
                return
        except (RestoreFailed, BackupCreateFailed, docker.errors.APIError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise RestoreFailed(f"{spec.engine} in {container.name} did not answer within {timeout:.0f} s: {last}")
        time.sleep(0.5)


def drop_other_databases(
    client: docker.DockerClient, container: ContainerInfo, spec: DbSpec, keep: set[str]
) -> list[str]:
    """Drop the databases that exist now but are not in the restored dump (a full-cluster dump only)."""
    if spec.engine not in SYSTEM_DATABASES or spec.databases:
        return []
    if spec.engine == "postgres":
        listing = _query(client, container, spec, "SELECT datname FROM pg_database WHERE NOT datistemplate")
    else:
        listing = _query(client, container, spec, "SHOW DATABASES")
    present = {line.strip() for line in listing.splitlines() if line.strip()}
    extra = sorted(present - keep - SYSTEM_DATABASES[spec.engine])
    for name in extra:
        if spec.engine == "postgres":
            _query(client, container, spec, 'DROP DATABASE "' + name.replace('"', '""') + '" WITH (FORCE)')
        else:
            _query(client, container, spec, "DROP DATABASE `" + name.replace("`", "``") + "`")
        log.info("%s: dropped database %s (not in the restored snapshot)", container.name, name)
    return extra
