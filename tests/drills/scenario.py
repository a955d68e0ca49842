"""Randomized restore drills: what one drill is, drawn from a seed.

A scenario is an app shape (1-3 volumes, a size class, a database engine or
none, a second container or not), a change history (2-4 backups with files and
rows changed in between, then one more round of changes: "now"), a restore
point, and in a third of the drills an injected fault. Everything is drawn
from `random.Random(seed)`, so a failing drill is re-run with its seed.
"""

from __future__ import annotations

import random
import shlex
from dataclasses import dataclass, field

ENGINES = ("none", "mariadb", "postgres", "redis")
SIZES = {"tiny": (4, 2_000), "small": (20, 40_000), "medium": (40, 400_000)}  # files per volume, max file size
FAULTS_ANY = ("volume write fails", "containers do not start", "corrupt pack")
FAULTS_DB = ("database killed during load",)
OWNERS = ("0:0", "33:33", "1000:1000", "999:999")
MODES = ("0644", "0600", "0755", "0640", "0444", "2775")
NAMES = ("index.php", "wp-config.php", "a b c.txt", "ünïcödé-✓.md", "photo.jpg", ".hidden", "data.json", "x")


@dataclass
class Scenario:
    seed: int
    engine: str
    volumes: int
    size: str
    worker: bool  # a second, volume-less container that is stopped and started too
    backups: int
    restore_point: int  # index into the backups
    fault: str | None
    disaster: bool  # the app's volumes are deleted before the restore (no fault then)
    scripts: list[list[str]] = field(default_factory=list)  # shell per round: 0 = initial, 1.. = changes
    sql: list[list[str]] = field(default_factory=list)  # database statements per round

    def describe(self) -> str:
        what = [
            f"seed {self.seed}",
            f"{self.volumes} vol {self.size}",
            f"db {self.engine}",
            f"{self.backups} backups",
            f"restore #{self.restore_point + 1}",
        ]
        if self.worker:
            what.append("+worker")
        if self.disaster:
            what.append("disaster")
        if self.fault:
            what.append(f"fault: {self.fault}")
        return ", ".join(what)


def generate(seed: int) -> Scenario:
    rng = random.Random(seed)
    engine = rng.choice(ENGINES)
    backups = rng.randint(2, 4)
    fault: str | None = None
    if seed % 3 == 2:  # a third of the drills, spread evenly over any run of seeds
        fault = rng.choice(FAULTS_ANY + (FAULTS_DB * 2 if engine != "none" else ()))
    s = Scenario(
        seed=seed,
        engine=engine,
        volumes=rng.randint(1, 3),
        size=rng.choice(list(SIZES)),
        worker=rng.random() < 0.4,
        backups=backups,
        restore_point=rng.randrange(backups),
        fault=fault,
        disaster=fault is None and rng.random() < 0.2,
    )
    files, max_size = SIZES[s.size]
    s.scripts = [[_populate(rng, v, files, max_size) for v in range(s.volumes)]]
    s.sql = [_db_initial(rng, engine)]
    for _ in range(backups):  # changes after each backup; the last round makes "now"
        s.scripts.append([_change(rng, v, max_size) for v in range(s.volumes)])
        s.sql.append(_db_change(rng, engine))
    return s


# ---- files ------------------------------------------------------------------------------


def _content(rng: random.Random, path: str, max_size: int) -> str:
    size = rng.choice((0, rng.randint(1, 300), rng.randint(1, max_size)))
    source = "/dev/urandom" if rng.random() < 0.5 else "/etc/services"  # incompressible or text
    if source == "/etc/services":
        return f"yes {shlex.quote(rng.choice(NAMES))} | head -c {size} > {shlex.quote(path)}"
    return f"head -c {size} {source} > {shlex.quote(path)}"


def _meta(rng: random.Random, path: str) -> list[str]:
    q = shlex.quote(path)
    out = [f"chown -h {rng.choice(OWNERS)} {q}"]
    if rng.random() < 0.7:
        out.append(f"chmod {rng.choice(MODES)} {q}")
    if rng.random() < 0.5:
        out.append(f"touch -h -d @{rng.randint(1_000_000_000, 1_790_000_000)}.{rng.randint(0, 999999999):09d} {q}")
    return out


def _populate(rng: random.Random, volume: int, files: int, max_size: int) -> str:
    root = f"/srv/v{volume}"
    dirs = [root]
    lines = []
    for i in range(rng.randint(1, 5)):
        parent = rng.choice(dirs)
        d = f"{parent}/dir{i}-{rng.choice(('a', 'ä', 'b c'))}"
        dirs.append(d)
        lines.append(f"mkdir -p {shlex.quote(d)}")
    made = []
    for i in range(files):
        path = f"{rng.choice(dirs)}/{i}-{rng.choice(NAMES)}"
        made.append(path)
        lines.append(_content(rng, path, max_size))
        lines += _meta(rng, path)
    for i in range(rng.randint(0, 3)):  # symlinks, some dangling
        target = rng.choice([*made, "/nonexistent/target", "../x"])
        lines.append(f"ln -sfn {shlex.quote(target)} {shlex.quote(f'{rng.choice(dirs)}/link{i}')}")
    for i in range(rng.randint(0, 2)):  # hard links
        lines.append(f"ln -f {shlex.quote(rng.choice(made))} {shlex.quote(f'{rng.choice(dirs)}/hard{i}')}")
    lines.append(f"mkdir -p {shlex.quote(root + '/empty dir')}")
    for d in dirs[1:]:
        lines += _meta(rng, d)
    return "set -e\n" + "\n".join(lines)


def _change(rng: random.Random, volume: int, max_size: int) -> str:
    """A round of changes, written against whatever is there (`find` picks the victims)."""
    root = shlex.quote(f"/srv/v{volume}")
    pick = f"find {root} -type f | sort | sed -n '{rng.randint(1, 9)}p'"
    ops = []
    for n in range(rng.randint(1, 6)):
        kind = rng.choice(("add", "modify", "delete", "chmod", "chown", "rmdir", "symlink", "hardlink", "touch"))
        if kind == "add":
            path = f"/srv/v{volume}/new-{rng.randint(0, 10**6)}-{rng.choice(NAMES)}"
            ops.append(_content(rng, path, max_size) + "; " + "; ".join(_meta(rng, path)))
        elif kind == "modify":
            ops.append(f'f=$({pick}); [ -z "$f" ] || head -c {rng.randint(1, 5000)} /dev/urandom >> "$f"')
        elif kind == "delete":
            ops.append(f'f=$({pick}); [ -z "$f" ] || rm -f "$f"')
        elif kind == "chmod":
            ops.append(f'f=$({pick}); [ -z "$f" ] || chmod {rng.choice(MODES)} "$f"')
        elif kind == "chown":
            ops.append(f'f=$({pick}); [ -z "$f" ] || chown {rng.choice(OWNERS)} "$f"')
        elif kind == "rmdir":
            ops.append(f"d=$(find {root} -mindepth 1 -type d | sort | sed -n '{rng.randint(1, 4)}p'); "
                       '[ -z "$d" ] || rm -rf "$d"')  # fmt: skip
        elif kind == "symlink":  # a file becomes a symlink
            ops.append(f'f=$({pick}); [ -z "$f" ] || {{ rm -f "$f"; ln -s target-{n} "$f"; }}')
        elif kind == "hardlink":
            ops.append(f'f=$({pick}); [ -z "$f" ] || ln -f "$f" {root}/hl-{rng.randint(0, 10**6)}')
        else:
            ops.append(f'f=$({pick}); [ -z "$f" ] || touch -d @{rng.randint(1_000_000_000, 1_790_000_000)} "$f"')
    return "\n".join(ops)


# ---- databases --------------------------------------------------------------------------


def _row(rng: random.Random, i: int, engine: str) -> str:
    name = rng.choice(NAMES).replace("'", "")
    blob = rng.randbytes(rng.randint(0, 40)).hex()
    data = f"decode('{blob}', 'hex')" if engine == "postgres" else f"UNHEX('{blob}')"
    return f"({i}, '{name} {rng.randint(0, 999)}', {data})"


def _table(engine: str, name: str) -> str:
    blob = "BYTEA" if engine == "postgres" else "BLOB"
    return f"CREATE TABLE {name} (id INT PRIMARY KEY, name VARCHAR(64), data {blob})"


def _db_initial(rng: random.Random, engine: str) -> list[str]:
    if engine == "none":
        return []
    if engine == "redis":
        return [f"SET k:{i} {rng.randint(0, 10**9)}" for i in range(rng.randint(5, 60))]
    prefix = "" if engine == "postgres" else "app."
    rows = ", ".join(_row(rng, i, engine) for i in range(rng.randint(3, 200)))
    return [_table(engine, f"{prefix}items"), f"INSERT INTO {prefix}items VALUES {rows}"]


def _db_change(rng: random.Random, engine: str) -> list[str]:
    if engine == "none":
        return []
    if engine == "redis":
        out = [f"SET k:{rng.randint(0, 80)} {rng.randint(0, 10**9)}" for _ in range(rng.randint(1, 10))]
        return out + [f"DEL k:{rng.randint(0, 80)}" for _ in range(rng.randint(0, 3))]
    prefix = "" if engine == "postgres" else "app."
    base = rng.randint(1000, 10**6)
    out = [f"INSERT INTO {prefix}items VALUES " + ", ".join(_row(rng, base + i, engine) for i in range(5))]
    out.append(f"UPDATE {prefix}items SET name = 'changed {base}' WHERE id % {rng.randint(2, 9)} = 0")
    out.append(f"DELETE FROM {prefix}items WHERE id % {rng.randint(5, 13)} = 1")
    if rng.random() < 0.4:
        out.append(_table(engine, f"{prefix}t{base}"))
        out.append(f"INSERT INTO {prefix}t{base} VALUES {_row(rng, 1, engine)}")
    if rng.random() < 0.3:  # a database made later: a restore to before it drops it
        out.append(f"CREATE DATABASE extra{base}")
    return out
