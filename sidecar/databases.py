"""Dump and load commands per database engine (DESIGN.md §4, `websoft9.backup.db`).

Pure: builds what to run inside the database container; `sidecar.jobs.dumps`
runs it. Credentials are resolved *inside* the container by a small `sh`
prologue from the container's own environment (`MARIADB_ROOT_PASSWORD`,
`MYSQL_ROOT_PASSWORD`, their `*_FILE` variants, `POSTGRES_PASSWORD`, the
variable named by `websoft9.backup.db.password_env`, ...) into the client's
environment (`MYSQL_PWD`, `PGPASSWORD`, `REDISCLI_AUTH`): a password never
passes through this process, an exec's arguments, or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.labels import DbSpec

# sh prologue: $W9_PW_VARS / $W9_PW_FILE_VARS name variables (validated names, safe to eval);
# the first non-empty one becomes $W9_PW_TARGET (e.g. MYSQL_PWD) for the command "$@".
# $W9_TOOLS lists candidate program names; the first one present runs.
_PROLOGUE = r"""
pw=""
for v in $W9_PW_VARS; do eval "val=\${$v-}"; if [ -n "$val" ]; then pw=$val; break; fi; done
if [ -z "$pw" ]; then
  for v in $W9_PW_FILE_VARS; do
    eval "f=\${$v-}"
    if [ -n "$f" ] && [ -r "$f" ]; then pw=$(cat "$f"); break; fi
  done
fi
if [ -n "$pw" ] && [ -n "$W9_PW_TARGET" ]; then export "$W9_PW_TARGET=$pw"; fi
unset pw val f v
tool=""
for t in $W9_TOOLS; do if command -v "$t" >/dev/null 2>&1; then tool=$t; break; fi; done
if [ -z "$tool" ]; then echo "none of: $W9_TOOLS found in the container" >&2; exit 127; fi
"""

_EXEC_TOOL = _PROLOGUE + 'exec "$tool" "$@"\n'

MYSQL_TRAILER = b"-- Dump completed"
POSTGRES_TRAILER = b"-- PostgreSQL database cluster dump complete"
POSTGRES_DB_TRAILER = b"-- PostgreSQL database dump complete"

# stderr lines of a psql restore that are expected when loading pg_dumpall --clean output
# into a running cluster (the connected superuser cannot be dropped or re-created)
POSTGRES_HARMLESS = ("current user cannot be dropped", "already exists", "cannot drop the currently open database")


@dataclass(frozen=True)
class Command:
    """One program to run in the container: `argv` with `env` (names and non-secret values)."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    def describe(self) -> str:
        """For logs and errors: the program and its options (never a password: none is in here)."""
        shown = [a for a in self.argv if a not in ("sh", "-c", _EXEC_TOOL, "w9")]
        return " ".join(shown)[:300]


@dataclass(frozen=True)
class DumpPlan:
    engine: str
    command: Command | None  # None for redis (several steps: see sidecar.jobs.dumps)
    filename: str  # the file of the snapshot source holding the dump
    trailer: bytes | None  # what a complete dump ends with (checked on the last bytes)
    magic: bytes | None = None  # what it starts with


def _env(pw_vars: list[str], file_vars: list[str], target: str, tools: list[str], **extra: str) -> dict[str, str]:
    env = {
        "W9_PW_VARS": " ".join(pw_vars),
        "W9_PW_FILE_VARS": " ".join(file_vars),
        "W9_PW_TARGET": target,
        "W9_TOOLS": " ".join(tools),
    }
    env.update(extra)
    return env


def _mysql_credentials(spec: DbSpec) -> tuple[str, list[str], list[str]]:
    user = spec.user or "root"
    if spec.password_env:
        return user, [spec.password_env], [spec.password_env + "_FILE"]
    if user == "root":
        names = ["MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD"]
    else:
        names = ["MARIADB_PASSWORD", "MYSQL_PASSWORD"]
    return user, names, [n + "_FILE" for n in names]


def _postgres_credentials(spec: DbSpec) -> tuple[list[str], list[str]]:
    names = [spec.password_env] if spec.password_env else ["POSTGRES_PASSWORD"]
    return names, [n + "_FILE" for n in names]


def _tool(tools: list[str], args: list[str], env: dict[str, str], user: str | None = None) -> Command:
    return Command(("sh", "-c", _EXEC_TOOL, "w9", *args), env, user)


def dump_plan(spec: DbSpec) -> DumpPlan:
    engine = spec.engine
    if engine in ("mysql", "mariadb"):
        user, pw_vars, file_vars = _mysql_credentials(spec)
        args = [
            f"--user={user}",
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--default-character-set=utf8mb4",
        ]
        args += ["--databases", *spec.databases] if spec.databases else ["--all-databases"]
        tools = ["mariadb-dump", "mysqldump"]
        env = _env(pw_vars, file_vars, "MYSQL_PWD", tools)
        return DumpPlan(engine, _tool(tools, args, env), f"{engine}.sql", MYSQL_TRAILER)
    if engine == "postgres":
        pw_vars, file_vars = _postgres_credentials(spec)
        user_arg = spec.user or "${POSTGRES_USER:-postgres}"
        if spec.databases:
            # the cluster's roles, then each database with its CREATE DATABASE; all or nothing
            script = (
                _PROLOGUE
                + 'set -e; U="'
                + user_arg
                + '"\n'
                + 'pg_dumpall -U "$U" --globals-only --clean --if-exists\n'
                + 'for db in "$@"; do pg_dump -U "$U" --create --clean --if-exists "$db"; done\n'
            )
            env = _env(pw_vars, file_vars, "PGPASSWORD", ["pg_dumpall"])
            command = Command(("sh", "-c", script, "w9", *spec.databases), env)
            return DumpPlan(engine, command, "postgres.sql", POSTGRES_DB_TRAILER)
        script = _PROLOGUE + 'exec pg_dumpall -U "' + user_arg + '" --clean --if-exists\n'
        env = _env(pw_vars, file_vars, "PGPASSWORD", ["pg_dumpall"])
        return DumpPlan(engine, Command(("sh", "-c", script, "w9"), env), "postgres.sql", POSTGRES_TRAILER)
    if engine == "mongodb":
        return DumpPlan(engine, _mongo_command("mongodump", spec), "mongodb.archive", None)
    if engine == "redis":
        return DumpPlan(engine, None, "dump.rdb", None, magic=b"REDIS")
    raise ValueError(f"unknown database engine {engine!r}")


def load_command(spec: DbSpec) -> Command:
    """The client that reads a dump of `dump_plan(spec)` on its standard input (not redis)."""
    engine = spec.engine
    if engine in ("mysql", "mariadb"):
        user, pw_vars, file_vars = _mysql_credentials(spec)
        tools = ["mariadb", "mysql"]
        env = _env(pw_vars, file_vars, "MYSQL_PWD", tools)
        return _tool(tools, [f"--user={user}", "--default-character-set=utf8mb4", "--binary-mode"], env)
    if engine == "postgres":
        pw_vars, file_vars = _postgres_credentials(spec)
        user_arg = spec.user or "${POSTGRES_USER:-postgres}"
        script = _PROLOGUE + 'exec psql -X -q -U "' + user_arg + '" -d postgres\n'
        env = _env(pw_vars, file_vars, "PGPASSWORD", ["psql"])
        return Command(("sh", "-c", script, "w9"), env)
    if engine == "mongodb":
        return _mongo_command("mongorestore", spec)
    raise ValueError(f"{engine} dumps are not loaded through a client")


def _mongo_command(program: str, spec: DbSpec) -> Command:
    """mongodump/mongorestore with --archive on stdout/stdin. With a root user in the
    environment, the password goes in a temporary --config file (mode 0600) made
    inside the container, since the tools read a password from nowhere else but argv."""
    user_var = "MONGO_INITDB_ROOT_USERNAME"
    pw_vars = [spec.password_env] if spec.password_env else ["MONGO_INITDB_ROOT_PASSWORD"]
    extra = ["--drop"] if program == "mongorestore" else []
    if spec.databases and program == "mongodump" and len(spec.databases) == 1:
        extra += [f"--db={spec.databases[0]}"]
    script = (
        _PROLOGUE
        + 'user="${W9_DB_USER:-${'
        + user_var
        + ':-}}"\n'
        + 'if [ -n "$user" ] && [ -n "${W9_SECRET-}" ]; then\n'
        + "  umask 077; cfg=$(mktemp); trap 'rm -f \"$cfg\"' EXIT\n"
        + '  printf \'password: "%s"\\n\' "$W9_SECRET" > "$cfg"; unset W9_SECRET\n'
        + '  "$tool" --archive --username="$user" --authenticationDatabase=admin --config="$cfg" "$@"\n'
        + "else\n"
        + '  exec "$tool" --archive "$@"\n'
        + "fi\n"
    )
    env = _env(pw_vars, [n + "_FILE" for n in pw_vars], "W9_SECRET", [program])
    if spec.user:
        env["W9_DB_USER"] = spec.user
    return Command(("sh", "-c", script, "w9", *extra), env)


def redis_env(spec: DbSpec) -> dict[str, str]:
    """Environment for redis-cli (REDISCLI_AUTH from the container's REDIS_PASSWORD or the label's variable)."""
    names = [spec.password_env] if spec.password_env else ["REDIS_PASSWORD"]
    return _env(names, [n + "_FILE" for n in names], "REDISCLI_AUTH", ["redis-cli"])


def redis_cli(*args: str, env: dict[str, str]) -> Command:
    return _tool(["redis-cli"], list(args), env)


def source_name(spec: DbSpec, service: str | None) -> str:
    return f"database:{service or spec.container}"


# ---- change fingerprints -----------------------------------------------------------------------
#
# A restore's safety snapshot may reuse the previous snapshot's dump instead of taking a new one
# when the server proves nothing was written since that dump began (sidecar.jobs.dumps): the
# fingerprint is read just before each dump and stored with it. Only counters that every write
# moves are in it, and none that the dump itself moves (checked on MariaDB 10.11 and PostgreSQL 15):
# - mysql/mariadb: InnoDB's log sequence number (every InnoDB change, DDL included), the handler
#   counters of row writes, updates and deletes (every engine: Aria system tables, grants, routines,
#   MyISAM), and the statement counters of DDL and DCL (views and triggers are files, not rows);
# - postgres: the WAL insert position (every logged change, and the commit record of any transaction
#   that wrote, unlogged tables included) and the postmaster's start time.
# A restarted server, an unreadable counter or a different container gives a different fingerprint.

_MYSQL_FINGERPRINT_SQL = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN "
    "('Innodb_lsn_current','Handler_write','Handler_update','Handler_delete','Com_truncate','Com_load') "
    "OR Variable_name LIKE 'Com\\_create\\_%' OR Variable_name LIKE 'Com\\_drop\\_%' "
    "OR Variable_name LIKE 'Com\\_alter\\_%' OR Variable_name LIKE 'Com\\_rename\\_%' "
    "OR Variable_name LIKE 'Com\\_grant%' OR Variable_name LIKE 'Com\\_revoke%' "
    "OR Variable_name LIKE 'Com\\_insert%' OR Variable_name LIKE 'Com\\_update%' "
    "OR Variable_name LIKE 'Com\\_delete%' OR Variable_name LIKE 'Com\\_replace%' "
    "OR Variable_name LIKE 'Com\\_%install\\_plugin'"
)
# the counters a fingerprint cannot do without (a server that hides them gets none)
MYSQL_FINGERPRINT_REQUIRED = ("Handler_write", "Handler_update", "Handler_delete")

_POSTGRES_FINGERPRINT_SQL = "SELECT pg_current_wal_insert_lsn(), pg_postmaster_start_time(), pg_is_in_recovery()"


def fingerprint_command(spec: DbSpec) -> Command | None:
    """What prints the server's change counters (see above), or None for engines without one
    (redis, mongodb: always dumped)."""
    engine = spec.engine
    if engine in ("mysql", "mariadb"):
        user, pw_vars, file_vars = _mysql_credentials(spec)
        tools = ["mariadb", "mysql"]
        env = _env(pw_vars, file_vars, "MYSQL_PWD", tools)
        return _tool(tools, [f"--user={user}", "--batch", "--skip-column-names", "-e", _MYSQL_FINGERPRINT_SQL], env)
    if engine == "postgres":
        pw_vars, file_vars = _postgres_credentials(spec)
        user_arg = spec.user or "${POSTGRES_USER:-postgres}"
        script = _PROLOGUE + 'exec psql -X -A -t -v ON_ERROR_STOP=1 -U "' + user_arg + '" -d postgres -c "$1"\n'
        env = _env(pw_vars, file_vars, "PGPASSWORD", ["psql"])
        return Command(("sh", "-c", script, "w9", _POSTGRES_FINGERPRINT_SQL), env)
    return None


def fingerprint_valid(engine: str, output: str) -> bool:
    """Whether the counters printed by `fingerprint_command` are usable: all the required ones there
    (mysql/mariadb), a WAL position of a server that is not a standby (postgres)."""
    if engine in ("mysql", "mariadb"):
        names = {line.split("\t", 1)[0] for line in output.splitlines() if "\t" in line}
        return all(n in names for n in MYSQL_FINGERPRINT_REQUIRED)
    if engine == "postgres":
        fields = output.strip().split("|")
        return len(fields) == 3 and "/" in fields[0] and fields[2] == "f"
    return False
