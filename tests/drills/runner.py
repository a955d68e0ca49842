"""Run one restore drill on the real Docker engine and judge it.

The drill brings up its scenario's compose app, makes the history (backups with
changes in between, copying each volume with `cp -a` and reading every table
at each backup), makes "now", then restores the restore point — with the
scenario's fault injected, if any. It passes when:
- no fault: the volumes are identical to that moment (content, modes, owners,
  mtimes, symlinks, hard links), every database reads as it did then, every
  container runs;
- a fault during the restore: `RESTORE_FAILED` saying it rolled back, and the
  volumes and databases are exactly "now" again, every container runs;
- a corrupt pack: `BACKUP_CORRUPTED` before anything is touched (no container
  restarted), "now" unchanged.
Anything else is a failure, with what differed.
"""

from __future__ import annotations

import difflib
import secrets
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.treecompare import compare
from sidecar.docker.apps import App, Registry
from sidecar.errors import BackupCorrupted, RestoreFailed
from sidecar.jobs import restore as restore_module
from sidecar.jobs.backup import backup_app
from sidecar.jobs.restore import restore_app
from sidecar.repo import tree
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.pack import DATA, pack_object_name
from sidecar.repo.repository import Repository
from tests.drills.scenario import Scenario
from tests.integration.conftest import ComposeProject, job_context, service, volume_path
from tests.integration.test_databases import MARIADB_START, POSTGRES_START, ROOT_PW

PASSPHRASE = b"restore drill key"
SCHEMAS = (
    "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA"
    " WHERE SCHEMA_NAME NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1"
)


@dataclass
class DrillResult:
    scenario: Scenario
    ok: bool
    outcome: str  # restored / rolled back / refused / what went wrong
    detail: str = ""
    restore_s: float = 0.0
    total_s: float = 0.0


class DrillFailure(AssertionError):
    pass


def _sh(container: str, command: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["docker", "exec", "-i", container, "sh", "-c", command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise DrillFailure(f"in {container}: {command[:120]!r} exited {out.returncode}: {out.stderr[-400:]}")
    return out.stdout


def _wait(check: Callable[[], object], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except DrillFailure as exc:
            if time.monotonic() > deadline:
                raise DrillFailure(f"{what} not ready within {timeout:.0f} s: {exc}") from None
            time.sleep(0.5)


class Drill:
    def __init__(self, s: Scenario, client, workdir: Path) -> None:  # type: ignore[no-untyped-def]
        self.s = s
        self.client = client
        self.dir = workdir
        self.compose = ComposeProject(workdir, f"w9drill{s.seed}x{secrets.token_hex(3)}")
        self.repo = Repository.init(LocalBackend(workdir / "repo"), PASSPHRASE)
        self.ctx = job_context(client, self.repo, workdir / "state")
        self.web = self.compose.container("web")
        self.db = self.compose.container("db")

    # ---- the app ----------------------------------------------------------------------------

    def write_compose(self) -> None:
        s = self.s
        keys = [f"v{i}" for i in range(s.volumes)]
        services = {"web": service(labels={"websoft9.backup.enable": "true"}, volumes=[f"{k}:/srv/{k}" for k in keys])}
        volumes = list(keys)
        if s.worker:
            services["worker"] = service()
        if s.engine == "mariadb":
            services["db"] = service(
                command=MARIADB_START,
                environment={"MARIADB_ROOT_PASSWORD": ROOT_PW},
                labels={"websoft9.backup.db": "mariadb"},
                volumes=["dbdata:/var/lib/mysql"],
            )
        elif s.engine == "postgres":
            services["db"] = service(command=POSTGRES_START, labels={"websoft9.backup.db": "postgres"},
                                     volumes=["dbdata:/var/lib/postgresql/data"])  # fmt: skip
        elif s.engine == "redis":
            services["db"] = service(command="exec redis-server --dir /data", labels={"websoft9.backup.db": "redis"},
                                     volumes=["dbdata:/data"])  # fmt: skip
        if s.engine != "none":
            volumes.append("dbdata")
        self.compose.write(services, volumes=volumes)

    def sql(self, statements: list[str], database: str = "app") -> str:
        if not statements:
            return ""
        engine = self.s.engine
        if engine == "mariadb":
            return _sh(self.db, 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot --batch -N',
                       stdin="".join(f"{q};\n" for q in statements))  # fmt: skip
        if engine == "postgres":
            return _sh(self.db, f"psql -X -q -A -t -v ON_ERROR_STOP=1 -U postgres -d {database}",
                       stdin="".join(f"{q};\n" for q in statements))  # fmt: skip
        return _sh(self.db, "redis-cli > /dev/null", stdin="".join(f"{q}\n" for q in statements))

    def wait_db(self) -> None:
        if self.s.engine == "mariadb":
            _wait(lambda: self.sql(["SELECT 1"]), "MariaDB")
        elif self.s.engine == "postgres":
            _wait(lambda: self.sql(["SELECT 1"], "postgres"), "PostgreSQL")
        elif self.s.engine == "redis":
            _wait(lambda: _sh(self.db, "redis-cli ping | grep -q PONG"), "Redis")

    def db_state(self) -> str:
        engine = self.s.engine
        if engine == "none":
            return ""
        if engine == "redis":
            return _sh(
                self.db, "for k in $(redis-cli --raw keys '*' | sort); do echo \"$k=$(redis-cli --raw get $k)\"; done"
            )
        if engine == "mariadb":
            out = self.sql([SCHEMAS])
            tables = self.sql(["SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='app' ORDER BY 1"])
            rows = [f"SELECT '{t}', id, name, HEX(data) FROM app.{t} ORDER BY id" for t in tables.split()]
        else:
            out = self.sql(["SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1"], "postgres")
            tables = self.sql(["SELECT tablename FROM pg_tables WHERE schemaname='public' ORDER BY 1"])
            rows = [f"SELECT '{t}', id, name, encode(data, 'hex') FROM {t} ORDER BY id" for t in tables.split()]
        return out + tables + self.sql(rows)

    def capture(self, name: str) -> tuple[Path, str]:
        """Copies of the volumes (cp -a keeps owners, modes, mtimes, links) and the databases' contents."""
        dest = self.dir / name
        dest.mkdir()
        for i in range(self.s.volumes):
            src = volume_path(self.client, self.compose.volume(f"v{i}"))
            subprocess.run(["cp", "-a", src, str(dest / f"v{i}")], check=True)
        return dest, self.db_state()

    def differences(self, expected: tuple[Path, str]) -> list[str]:
        problems = []
        for i in range(self.s.volumes):
            now = volume_path(self.client, self.compose.volume(f"v{i}"))
            problems += [f"v{i}: {p}" for p in compare(str(expected[0] / f"v{i}"), now)]
        db_now = self.db_state()
        if db_now != expected[1]:
            diff = difflib.unified_diff(
                expected[1].splitlines(), db_now.splitlines(), "expected", "restored", n=0, lineterm=""
            )
            problems.append("the database differs: " + " | ".join(list(diff)[2:12]))
        return problems

    def containers_running(self) -> list[str]:
        names = [self.web] + ([self.db] if self.s.engine != "none" else [])
        names += [self.compose.container("worker")] if self.s.worker else []
        return [n for n in names if not self.client.api.inspect_container(n)["State"]["Running"]]

    def app(self) -> App:
        registry = Registry(log_changes=False)
        registry.inventory(self.client)
        return registry.require(self.compose.name)

    # ---- the drill --------------------------------------------------------------------------

    def prepare(self) -> tuple[list, list, tuple[Path, str]]:
        s = self.s
        self.write_compose()
        self.compose.up()
        self.wait_db()
        if s.engine == "mariadb":
            self.sql(["CREATE DATABASE app"])
        elif s.engine == "postgres":
            self.sql(["CREATE DATABASE app"], "postgres")
        snaps, states = [], []
        for n in range(s.backups + 1):
            for script in s.scripts[n]:
                _sh(self.web, script)
            self.sql(s.sql[n])
            if n == s.backups:
                break
            snaps.append(backup_app(self.ctx, self.app()).snapshot)
            states.append(self.capture(f"state-{n}"))
        return snaps, states, self.capture("now")

    def inject(self, stack: ExitStack, target) -> None:  # type: ignore[no-untyped-def]
        fault = self.s.fault
        if fault == "database killed during load":
            real_load = restore_module.load_database
            calls: list[str] = []

            def dying_load(client, container, spec, dump, exact=False):  # type: ignore[no-untyped-def]
                calls.append(container.name)
                if len(calls) == 1:
                    client.api.kill(container.id)
                return real_load(client, container, spec, dump, exact=exact)

            restore_module.load_database = dying_load
            stack.callback(setattr, restore_module, "load_database", real_load)
        elif fault == "volume write fails":
            access = self.ctx.volume_access
            real_restore = access.restore
            writes: list[str] = []

            def failing(repo, snapshot, source, app, volume, delete=True):  # type: ignore[no-untyped-def]
                writes.append(source)
                if len(writes) == 1:  # half of it written, then the disk is full
                    real_restore(repo, snapshot, source, app, volume, delete=delete)
                    raise OSError(28, "No space left on device")
                return real_restore(repo, snapshot, source, app, volume, delete=delete)

            access.restore = failing
            stack.callback(setattr, access, "restore", real_restore)
        elif fault == "containers do not start":
            real_start = restore_module._start
            starts: list[int] = []

            def start_fails_once(ctx, running, timeout):  # type: ignore[no-untyped-def]
                errors = real_start(ctx, running, timeout)
                starts.append(1)
                return errors or (
                    ["web did not become healthy within the timeout (injected)"] if len(starts) == 1 else []
                )

            restore_module._start = start_fails_once
            stack.callback(setattr, restore_module, "_start", real_start)
        elif fault == "corrupt pack":
            r = self.repo
            index = r.index()
            packs: dict[str, int] = {}
            for source in target.sources:
                for entry in tree.read_tree([bytes.fromhex(h) for h in source.tree], r.load_blob):
                    for h in entry.get("blobs", ()):
                        loc = index.get(bytes.fromhex(h))
                        if loc is not None and loc.type == DATA:
                            packs[loc.pack_id] = packs.get(loc.pack_id, 0) + loc.length
            if not packs:
                raise DrillFailure("the restore point holds no data to corrupt")
            victim = self.dir / "repo" / pack_object_name(max(packs, key=lambda p: packs[p]))
            data = victim.read_bytes()
            victim.write_bytes(data[: len(data) // 2])  # truncated: found by the structure check

    def run(self) -> DrillResult:
        s = self.s
        t0 = time.monotonic()
        try:
            snaps, states, now = self.prepare()
        except Exception as exc:
            return DrillResult(
                s, False, "setup failed", f"{exc}\n{traceback.format_exc(limit=3)}", 0, time.monotonic() - t0
            )
        target = snaps[s.restore_point]
        if s.disaster:
            self.compose.down()
            self.compose.up()
            self.wait_db()
        started = {c: self.client.api.inspect_container(c)["State"]["StartedAt"] for c in (self.web,)}
        raised: BaseException | None = None
        t1 = time.monotonic()
        with ExitStack() as stack:
            self.inject(stack, target)
            try:
                restore_app(self.ctx, self.app(), target)
            except Exception as exc:
                raised = exc
        restore_s = time.monotonic() - t1
        self.wait_db()

        def result(ok: bool, outcome: str, detail: str = "") -> DrillResult:
            return DrillResult(s, ok, outcome, detail, restore_s, time.monotonic() - t0)

        if s.fault == "corrupt pack":
            if not isinstance(raised, BackupCorrupted):
                return result(False, "corrupt pack not refused", repr(raised))
            if self.client.api.inspect_container(self.web)["State"]["StartedAt"] != started[self.web]:
                return result(False, "refused, but the app was restarted")
            expected, outcome = now, "refused"
        elif s.fault:
            if not isinstance(raised, RestoreFailed) or "rolled back to the safety snapshot" not in str(raised):
                return result(False, "fault not rolled back", repr(raised))
            expected, outcome = now, "rolled back"
        else:
            if raised is not None:
                return result(False, "restore failed", f"{type(raised).__name__}: {raised}")
            expected, outcome = states[s.restore_point], "restored"
        stopped = self.containers_running()
        if stopped:
            return result(False, f"{outcome}, but not running", ", ".join(stopped))
        problems = self.differences(expected)
        if problems:
            return result(False, f"{outcome}, but not exact", "; ".join(problems[:8]))
        return result(True, outcome)

    def close(self) -> None:
        self.compose.down()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_drill(s: Scenario, client, workdir: Path) -> DrillResult:  # type: ignore[no-untyped-def]
    workdir.mkdir(parents=True, exist_ok=True)
    drill = Drill(s, client, workdir)
    try:
        return drill.run()
    finally:
        drill.close()
