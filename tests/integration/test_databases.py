"""Real MariaDB, PostgreSQL and Redis servers: dump with a backup, damage, load, compare row by row."""

from __future__ import annotations

import subprocess
import time

import pytest

from sidecar.errors import BackupCreateFailed
from sidecar.jobs import dumps
from sidecar.jobs.backup import backup_app
from sidecar.jobs.dumps import load_database
from sidecar.repo.export import open_stream_file
from tests.integration.conftest import job_context, service

ROOT_PW = "r00t pass with spaces & $igns"

MARIADB_START = r"""
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld /var/lib/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --auth-root-authentication-method=normal >/dev/null
fi
printf "ALTER USER 'root'@'localhost' IDENTIFIED BY '%s';\n" "$MARIADB_ROOT_PASSWORD" > /run/mysqld/init.sql
exec mariadbd --user=mysql --datadir=/var/lib/mysql --init-file=/run/mysqld/init.sql
"""

POSTGRES_START = r"""
chown postgres:postgres /var/lib/postgresql/data && mkdir -p /run/postgresql && chown postgres /run/postgresql
exec su postgres -s /bin/sh -c '[ -f /var/lib/postgresql/data/PG_VERSION ] ||
  /usr/lib/postgresql/15/bin/initdb -D /var/lib/postgresql/data >/dev/null;
  exec /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/data'
"""

MARIADB_DATA = """
CREATE DATABASE shop CHARACTER SET utf8mb4;
CREATE DATABASE blog CHARACTER SET utf8mb4;
CREATE TABLE shop.products (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100), photo BLOB, price DECIMAL(8,2));
CREATE TABLE shop.audit (id INT PRIMARY KEY AUTO_INCREMENT, product INT, note VARCHAR(50));
CREATE TRIGGER shop.products_ai AFTER INSERT ON shop.products
  FOR EACH ROW INSERT INTO shop.audit (product, note) VALUES (NEW.id, 'created');
INSERT INTO shop.products (name, photo, price) VALUES
  ('héllo wörld ✓ 日本', UNHEX('00FF10270D0A5C'), 9.99), ('plain', NULL, 0), ('emoji 😀', RANDOM_BYTES(200), 1.5);
INSERT INTO shop.products (name, photo, price)
  SELECT CONCAT('bulk ', seq), RANDOM_BYTES(64), seq FROM shop.seq_1_to_2000;
CREATE VIEW shop.cheap AS SELECT id, name FROM shop.products WHERE price < 5;
CREATE TABLE blog.posts (id INT PRIMARY KEY, body MEDIUMTEXT);
INSERT INTO blog.posts VALUES (1, REPEAT('lorem ipsum ', 5000)), (2, 'Ünïcödé');
"""

MARIADB_QUERIES = [
    "SELECT id, name, HEX(photo), price FROM shop.products ORDER BY id",
    "SELECT * FROM shop.audit ORDER BY id",
    "SELECT * FROM shop.cheap ORDER BY id",
    "SELECT id, MD5(body) FROM blog.posts ORDER BY id",
    "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='shop'",
]

MARIADB_DAMAGE = """
UPDATE shop.products SET name='changed', photo=NULL WHERE id <= 3;
DELETE FROM shop.products WHERE id > 1000;
DROP VIEW shop.cheap;
DROP TRIGGER shop.products_ai;
DROP DATABASE blog;
"""


def docker_exec(container: str, command: str, stdin: str | None = None, user: str | None = None) -> str:
    args = ["docker", "exec", "-i"] + (["-u", user] if user else []) + [container, "sh", "-c", command]
    out = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def mariadb(container: str, sql: str) -> str:
    return docker_exec(container, 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot --batch', stdin=sql)


def psql(container: str, sql: str, db: str = "postgres") -> str:
    return docker_exec(container, f"psql -X -q -A -t -v ON_ERROR_STOP=1 -U postgres -d {db}", stdin=sql)


def wait_until(check, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            check()
            return
        except AssertionError as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{what} not ready within {timeout} s: {last}")


def mariadb_app(compose, extra_env=None, labels=None, start=MARIADB_START):
    compose.write(
        {
            "web": service(volumes=["html:/var/www/html"]),
            "db": service(
                command=start,
                environment={"MARIADB_ROOT_PASSWORD": ROOT_PW, **(extra_env or {})},
                labels={"websoft9.backup.db": "mariadb", **(labels or {})},
                volumes=["dbdata:/var/lib/mysql"],
            ),
        },
        volumes=["html", "dbdata"],
    )
    compose.up()
    db = compose.container("db")
    wait_until(lambda: mariadb(db, "SELECT 1"), "MariaDB")
    return db


def _results(container: str) -> list[str]:
    return [mariadb(container, q) for q in MARIADB_QUERIES]


def _round_trip_mariadb(compose, registry, docker_client, local_repo, tmp_path, db: str) -> None:
    mariadb(db, MARIADB_DATA)
    before = _results(db)
    assert "héllo wörld ✓ 日本" in before[0] and "00FF10270D0A5C" in before[0]
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    result = backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app)
    snap = result.snapshot
    names = sorted(s.name for s in snap.sources)
    # the DB's data volume is not copied file by file: its dump is its backup
    assert names == ["database:db", "volume:html"]
    assert snap.source("database:db").engine == "mariadb"

    mariadb(db, MARIADB_DAMAGE)
    assert mariadb(db, MARIADB_QUERIES[0]) != before[0]
    container = registry.require(compose.name).container(db)
    with open_stream_file(local_repo, snap, "database:db") as dump:
        load_database(docker_client, container, app.policy.databases[0], dump)
    assert _results(db) == before


def test_mariadb_dump_and_load_round_trip(compose, registry, docker_client, local_repo, tmp_path):
    db = mariadb_app(compose)
    _round_trip_mariadb(compose, registry, docker_client, local_repo, tmp_path, db)
    assert "mariadb-dump" in docker_exec(db, "command -v mariadb-dump")


def test_mariadb_with_only_the_mysqldump_and_mysql_names(compose, registry, docker_client, local_repo, tmp_path):
    db = mariadb_app(compose)
    # as in older images: the programs exist only as mysqldump / mysql
    docker_exec(db, "mv /usr/bin/mariadb-dump /usr/bin/mysqldump && mv /usr/bin/mariadb /usr/bin/mysql")
    docker_exec(db, "ln -s mysql /usr/bin/mariadb")  # our own test helper still says `mariadb`
    _round_trip_mariadb(compose, registry, docker_client, local_repo, tmp_path, db)
    assert docker_exec(db, "command -v mariadb-dump || echo missing").strip() == "missing"


def test_wrong_password_names_the_container_and_leaves_no_snapshot(
    compose, registry, docker_client, local_repo, tmp_path
):
    db = mariadb_app(
        compose,
        extra_env={"APP_DB_PASSWORD": "not-the-pw-7f3a"},
        labels={"websoft9.backup.db.password_env": "APP_DB_PASSWORD"},
    )
    registry.inventory(docker_client)
    app = registry.require(compose.name)
    with pytest.raises(BackupCreateFailed) as failure:
        backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app)
    message = str(failure.value)
    assert db in message and "Access denied" in message
    assert "not-the-pw-7f3a" not in message and ROOT_PW not in message  # no password is echoed
    assert local_repo.list_snapshots() == []


def test_dump_cut_by_a_dying_server_gives_no_snapshot(
    compose, registry, docker_client, local_repo, tmp_path, monkeypatch
):
    db = mariadb_app(compose)
    mariadb(
        db,
        "CREATE DATABASE big; CREATE TABLE big.t (id INT PRIMARY KEY, v VARCHAR(1000));"
        "INSERT INTO big.t SELECT seq, REPEAT(MD5(seq), 30) FROM big.seq_1_to_60000;",
    )
    registry.inventory(docker_client)
    app = registry.require(compose.name)

    class KilledMidway(dumps.ExecStream):
        killed = False

        def readinto(self, buffer):
            n = super().readinto(buffer)
            if self.size > 1 << 20 and not KilledMidway.killed:
                KilledMidway.killed = True
                docker_client.api.kill(db)  # the server dies while the dump streams
            return n

    monkeypatch.setattr(dumps, "ExecStream", KilledMidway)
    with pytest.raises(BackupCreateFailed, match=rf"mariadb dump of {db}"):
        backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app)
    assert KilledMidway.killed
    assert local_repo.list_snapshots() == []


POSTGRES_DATA = [
    ("postgres", "CREATE DATABASE shop; CREATE DATABASE wiki;"),
    (
        "shop",
        """
        CREATE TABLE products (id SERIAL PRIMARY KEY, name TEXT, photo BYTEA, price NUMERIC(8,2));
        CREATE TABLE audit (id SERIAL PRIMARY KEY, product INT, note TEXT);
        CREATE FUNCTION log_product() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN INSERT INTO audit (product, note) VALUES (NEW.id, 'created'); RETURN NEW; END $$;
        CREATE TRIGGER products_ai AFTER INSERT ON products FOR EACH ROW EXECUTE FUNCTION log_product();
        INSERT INTO products (name, photo, price) VALUES
          ('héllo wörld ✓ 日本', '\\x00ff10270d0a5c', 9.99), ('emoji 😀', NULL, 1.5);
        INSERT INTO products (name, photo, price)
          SELECT 'bulk ' || g, decode(md5(g::text), 'hex'), g FROM generate_series(1, 2000) g;
        CREATE VIEW cheap AS SELECT id, name FROM products WHERE price < 5;
        """,
    ),
    ("wiki", "CREATE TABLE pages (id INT PRIMARY KEY, body TEXT); INSERT INTO pages VALUES (1, 'Ünïcödé');"),
]
POSTGRES_QUERIES = [
    ("shop", "SELECT id, name, encode(photo, 'hex'), price FROM products ORDER BY id"),
    ("shop", "SELECT * FROM audit ORDER BY id"),
    ("shop", "SELECT * FROM cheap ORDER BY id"),
    ("shop", "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"),
    ("wiki", "SELECT * FROM pages ORDER BY id"),
    ("postgres", "SELECT datname FROM pg_database ORDER BY datname"),
]


def test_postgres_dump_and_load_round_trip(compose, registry, docker_client, local_repo, tmp_path):
    compose.write(
        {
            "db": service(
                command=POSTGRES_START,
                labels={"websoft9.backup.db": "postgres"},
                volumes=["pgdata:/var/lib/postgresql/data"],
            )
        },
        volumes=["pgdata"],
    )
    compose.up()
    db = compose.container("db")
    wait_until(lambda: psql(db, "SELECT 1"), "PostgreSQL")
    for database, sql in POSTGRES_DATA:
        psql(db, sql, database)
    before = [psql(db, q, d) for d, q in POSTGRES_QUERIES]
    assert "héllo wörld ✓ 日本" in before[0] and "00ff10270d0a5c" in before[0]

    registry.inventory(docker_client)
    app = registry.require(compose.name)
    ctx = job_context(docker_client, local_repo, tmp_path / "state")
    with pytest.raises(BackupCreateFailed, match="nothing to back up"):  # no volume besides the DB's own
        backup_app(ctx, app, include_database=False)
    snap = backup_app(ctx, app).snapshot
    assert [s.name for s in snap.sources] == ["database:db"]

    psql(db, "UPDATE products SET name = 'changed'; DELETE FROM audit; DROP VIEW cheap;", "shop")
    psql(db, "DROP DATABASE wiki;")
    assert psql(db, POSTGRES_QUERIES[0][1], "shop") != before[0]
    with open_stream_file(local_repo, snap, "database:db") as dump:
        load_database(docker_client, app.container(db), app.policy.databases[0], dump)
    assert [psql(db, q, d) for d, q in POSTGRES_QUERIES] == before


def test_redis_bgsave_dump_and_load(compose, registry, docker_client, local_repo, tmp_path):
    compose.write(
        {
            "cache": service(
                command="exec redis-server --dir /data",
                labels={"websoft9.backup.db": "redis"},
                volumes=["rdata:/data"],
            )
        },
        volumes=["rdata"],
    )
    compose.up()
    cache = compose.container("cache")
    wait_until(lambda: docker_exec(cache, "redis-cli ping | grep -q PONG"), "Redis")
    docker_exec(cache, "redis-cli -x set blob", stdin="bin\x01\x02 ✓ data\n")
    docker_exec(cache, 'for i in $(seq 1 500); do echo "SET key:$i value-$i"; done | redis-cli > /dev/null')
    docker_exec(cache, "redis-cli rpush list a b c > /dev/null")
    dump_keys = "redis-cli --raw keys '*' | sort; redis-cli get blob; redis-cli lrange list 0 -1"
    before = docker_exec(cache, dump_keys)
    assert "key:500" in before

    registry.inventory(docker_client)
    app = registry.require(compose.name)
    # redis started within the second: its LASTSAVE (whole seconds) may equal the time of our save
    snap = backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app).snapshot
    assert [s.name for s in snap.sources] == ["database:cache"]
    again = backup_app(job_context(docker_client, local_repo, tmp_path / "state"), app).snapshot  # same second
    assert again.source("database:cache").stats.bytes == snap.source("database:cache").stats.bytes

    docker_exec(cache, "redis-cli flushall > /dev/null")
    with open_stream_file(local_repo, snap, "database:cache") as dump:
        load_database(docker_client, app.container(cache), app.policy.databases[0], dump)
    wait_until(lambda: docker_exec(cache, "redis-cli ping | grep -q PONG"), "Redis after the restore")
    assert docker_exec(cache, dump_keys) == before
