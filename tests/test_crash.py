"""Crash safety: `kill -9` a backup or a prune at many points, then check the repository.

Every kill is a SIGKILL to the whole process group (the backup's store workers
included) at a delay spread over a measured full run, plus kills triggered by
what appears in the repository (first pack, index, snapshot; for prune: new
pack, new index, first deleted pack), so the critical moments are hit every
time. After each kill the repository must check clean (`check --read-data`),
stale locks of the dead process must not block anyone, and what was backed up
before must restore exactly.

CRASH_POINTS (default 8) and PRUNE_CRASH_POINTS (default 5) set how many
timed kill points are tried.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench import dataset
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.pack import DATA
from sidecar.repo.repository import Repository
from tests.conftest import PASSWORD, ROOT, copy_tree, run_cli

CRASH_POINTS = int(os.environ.get("CRASH_POINTS", "8"))
PRUNE_CRASH_POINTS = int(os.environ.get("PRUNE_CRASH_POINTS", "5"))
BIG_MB = 80
PRUNE_MB = 24
APP = "crash-app"


# ---- processes -------------------------------------------------------------------------


def start_cli(
    *args: object, log: Path, stdin: bool = False, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`python -m sidecar ARGS` in its own process group (session), output to files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    env["BACKUP_ENCRYPTION_KEY"] = PASSWORD
    env.update(extra_env or {})
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar", *map(str, args)],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, process group) of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(name)] = (fields[0].decode(), int(fields[1]), int(fields[2]))
    return table


def live_group_members(pgid: int) -> set[int]:
    """Processes of the group that still run (zombies are dead)."""
    return {pid for pid, (state, _, group) in _proc_table().items() if group == pgid and state not in "ZX"}


def wait_group_gone(pgid: int, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while (alive := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@dataclass
class Kill:
    label: str
    returncode: int
    killed: bool  # the process was still running when the signal came
    workers: set[int] = field(default_factory=set)  # its child processes at that moment


def _children(proc: subprocess.Popen, table: dict | None = None) -> set[int]:
    table = _proc_table() if table is None else table
    return {pid for pid, (state, ppid, _) in table.items() if ppid == proc.pid and state not in "ZX"}


def kill_group(proc: subprocess.Popen, label: str) -> Kill:
    """SIGKILL the whole process group; reap the leader; no member may survive."""
    pgid = proc.pid
    table = _proc_table()
    running = proc.poll() is None
    workers = _children(proc, table)
    with contextlib.suppress(ProcessLookupError):  # the whole group already exited
        os.killpg(pgid, signal.SIGKILL)
    rc = proc.wait(timeout=30)
    orphans = wait_group_gone(pgid, timeout=10)
    assert not orphans, f"{label}: processes of the killed group survived: {orphans}"
    return Kill(label, rc, running and rc == -signal.SIGKILL, workers)


def kill_after(proc: subprocess.Popen, delay: float, label: str) -> Kill:
    deadline = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
    return kill_group(proc, label)


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], label: str, timeout: float = 60) -> Kill:
    """Kill as soon as `condition()` holds (polled every millisecond or so)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            break
        time.sleep(0.001)
    return kill_group(proc, label)


def spread(n: int, low: float = 0.03, high: float = 1.0, power: float = 0.5) -> list[float]:
    """n fractions from `low` (start-up, early chunking) to `high` (index and snapshot writing);
    with power < 1 closer together towards the end, where a backup stores its packs, index and
    snapshot."""
    if n <= 1:
        return [low + (high - low) * 0.75] * n
    return [low + (high - low) * (i / (n - 1)) ** power for i in range(n)]


# ---- repository helpers --------------------------------------------------------------


def objects(repo: Path, kind: str) -> dict[str, int]:
    """name -> size of the stored objects under kind/ (data/ recursively)."""
    base = repo / kind
    out = {}
    for dirpath, _, names in os.walk(base):
        for name in names:
            try:
                out[name] = os.path.getsize(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
    return out


def du(path: Path) -> int:
    return sum(objects(path.parent, path.name).values())


def init_repo(path: Path, pack_size: int | None = None) -> Path:
    result = run_cli("init", "--repo", path)
    assert result.code == 0, result.err
    if pack_size is not None:  # a supported config key: small packs make a backup write index files as it goes
        config = json.loads((path / "config").read_text())
        config["pack_size"] = pack_size
        (path / "config").write_text(json.dumps(config, indent=1))
    return path


def backup(repo: Path, src: Path, *extra: str) -> dict:
    result = run_cli("backup", "--repo", repo, "--path", src, "--app-id", APP, "--json", *extra)
    assert result.code == 0, result.err
    return result.json()


def check_clean(repo: Path, label: str) -> None:
    result = run_cli("check", "--repo", repo, "--read-data")
    assert result.code == 0, f"{label}: check --read-data failed:\n{result.out}\n{result.err}"
    errors = [line for line in result.out.splitlines() if line.startswith("error")]
    assert not errors, f"{label}: {errors}"


def assert_restores(repo: Path, snapshot: str, original: Path, target: Path, same_tree, label: str) -> None:
    result = run_cli("restore", snapshot, "--repo", repo, "--target", target)
    assert result.code == 0, f"{label}: restore of {snapshot[:8]} failed: {result.err}"
    same_tree(original, target)


def snapshot_ids(repo: Path) -> list[str]:
    result = run_cli("snapshots", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return [s["id"] for s in result.json()]


def mutate(path: Path, seed: int) -> None:
    """bench.dataset.mutate, made repeatable: it turns odd/link-to-run from a symlink into a
    directory and fails when that was already done, so put the symlink back first."""
    link = path / "odd" / "link-to-run"
    if link.is_dir() and not link.is_symlink():
        subprocess.run(["rm", "-rf", "--", str(link)], check=True)
        os.symlink("run.sh", link)
    dataset.mutate(str(path), seed=seed)


_BACKUP_STATES: list[tuple[str, Callable[[Kill, dict[str, set[str]]], bool]]] = [
    ("finished", lambda k, new: k.returncode == 0),
    ("snapshot written", lambda k, new: bool(new["snapshots"])),
    ("index written", lambda k, new: bool(new["index"])),
    ("packs stored", lambda k, new: bool(new["data"])),
    ("workers running", lambda k, new: bool(k.workers)),
]


# ---- the big data set ---------------------------------------------------------------------


@dataclass
class BigData:
    path: Path
    duration: float  # wall time of a full backup, `python -m sidecar` start to exit
    rerun_duration: float  # the same when the repository has all the data already (reads, stores nothing)
    bytes: int
    added_bytes: int  # of a first backup into an empty repository
    stored_bytes: int  # its size in the repository


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> BigData:
    """An ~80 MiB data set (never changed by the tests) and how long a full backup of it takes."""
    base = tmp_path_factory.mktemp("big")
    path = base / "data"
    dataset.create(str(path), size_mb=BIG_MB, seed=7)
    repo = init_repo(base / "measure-repo")
    t0 = time.monotonic()
    summary = backup(repo, path, "--type", "full")
    duration = time.monotonic() - t0
    t0 = time.monotonic()
    backup(repo, path, "--type", "full")
    rerun = time.monotonic() - t0
    subprocess.run(["rm", "-rf", "--", str(repo)], check=True)
    return BigData(path, duration, rerun, summary["bytes"], summary["added_bytes"], summary["stored_bytes"])


# ---- backup ------------------------------------------------------------------------------------


def test_backup_killed_at_many_points(tmp_path: Path, big: BigData, data: Path, snapshot_copy, same_tree) -> None:
    repo = init_repo(tmp_path / "repo")
    s0 = backup(repo, data)["snapshot_id"]
    s0_state = snapshot_copy(data)
    s0_index = set(objects(repo, "index"))

    # Timed kills, and kills at the moments that matter whatever the machine's speed: the first
    # stored pack; the index written but not the snapshot; the snapshot written, the process still
    # running. Once a run has indexed the data, later runs store nothing new (and run faster), so
    # the first-pack kill comes first, the early timed kills (start-up, chunking, pack writing)
    # next, then the index kill, then the late timed kills (scaled to such a re-run: its end,
    # listing and snapshot writing), then the snapshot kill. Every run is `--type full`: it reads
    # all files again instead of reusing a parent snapshot's listing.
    fractions = spread(CRASH_POINTS)
    plan: list[tuple[str, float | str]] = [("kill at the first stored pack", "data")]
    plan += [(f"timed kill at {f:.2f} of {big.duration:.2f}s", f * big.duration) for f in fractions if f < 0.8]
    plan += [("kill once the index is written", "index")]
    plan += [
        (f"timed kill at {f:.2f} of a re-run's {big.rerun_duration:.2f}s", f * big.rerun_duration)
        for f in fractions
        if f >= 0.8
    ]
    plan += [("kill once the snapshot is written", "snapshots")]
    index_kill = plan.index(("kill once the index is written", "index"))

    kills: list[Kill] = []
    new_snapshots: dict[str, str] = {}  # snapshot id -> label of the run that wrote it
    saw_stale_lock = False
    states: list[str] = []
    for n, (label, when) in enumerate(plan):
        before = {kind: set(objects(repo, kind)) for kind in ("data", "index", "snapshots")}
        snp0 = before["snapshots"]
        proc = start_cli(
            "backup", "--repo", repo, "--path", big.path, "--app-id", APP, "--type", "full", log=tmp_path / f"b{n}"
        )
        if isinstance(when, str):
            k = kill_when(proc, lambda kind=when, seen=before[when]: bool(set(objects(repo, kind)) - seen), label)
        else:
            k = kill_after(proc, when, label)
        kills.append(k)
        if k.killed and k.workers:
            saw_stale_lock = saw_stale_lock or bool(objects(repo, "locks"))
        new = {kind: set(objects(repo, kind)) - seen for kind, seen in before.items()}
        state = next(
            (name for name, hit in _BACKUP_STATES if hit(k, new)),
            "starting",
        )
        states.append(state)
        print(f"{label}: exit {k.returncode}, {len(k.workers)} workers, {len(new['data'])} new packs, {state}")
        written = set(objects(repo, "snapshots")) - snp0
        assert len(written) <= 1, f"{label}: one run wrote {len(written)} snapshots"
        if k.returncode == 0:
            assert written, f"{label}: the run completed but left no snapshot"
        else:
            assert k.returncode == -signal.SIGKILL, (
                f"{label}: exit {k.returncode}: {(tmp_path / f'b{n}.err').read_text()}"
            )
        for sid in written:
            new_snapshots[sid] = label
        # the repository is consistent, a new backup needs no `unlock`, the old snapshot is intact
        check_clean(repo, label)
        assert_restores(repo, s0, s0_state, tmp_path / f"restore-s0-{n}", same_tree, label)

    assert any(k.killed and k.workers for k in kills), "no kill hit a backup while its store workers ran"
    # the first kill came after packs were stored (on many cores, maybe only at the very end), the last
    # one after the snapshot was written
    assert states[0] in ("packs stored", "index written") and states[-1] == "snapshot written", states
    if not {"finished", "index written", "snapshot written"} & set(states[:index_kill]):
        assert states[index_kill] == "index written", states  # nothing had indexed the data before it
    assert saw_stale_lock, "no killed backup left its lock behind (the stale-lock case was not exercised)"

    # every snapshot is complete: S0 plus only those of runs that got as far as writing one
    ids = snapshot_ids(repo)
    assert s0 in ids
    assert set(ids) - {s0} == set(new_snapshots), "a snapshot appeared that no run wrote"
    completed = sum(1 for k in kills if k.returncode == 0)
    assert completed <= len(new_snapshots) <= completed + sum(1 for k in kills if k.killed)
    for m, sid in enumerate(sorted(new_snapshots)):
        assert_restores(repo, sid, big.path, tmp_path / f"restore-new-{m}", same_tree, new_snapshots[sid])

    # an index written by an interrupted run is reused: a final full backup stores little
    assert set(objects(repo, "index")) - s0_index, "no run got as far as writing an index"
    size_before = du(repo)
    final = backup(repo, big.path, "--type", "full")
    growth = du(repo) - size_before
    assert final["bytes"] == big.bytes
    assert final["added_bytes"] < 0.05 * big.bytes, final
    assert growth < 0.1 * big.stored_bytes, f"repository grew by {growth} bytes (a full copy is {big.stored_bytes})"
    assert_restores(repo, final["snapshot_id"], big.path, tmp_path / "restore-final", same_tree, "final")

    # stale locks of the dead processes do not block an exclusive lock either: prune cleans up
    result = run_cli("prune", "--repo", repo, "--lock-wait", "0", "--json")
    assert result.code == 0, result.err
    result = run_cli("check", "--repo", repo, "--read-data", "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    assert report["ok"] and not report["notes"], report
    assert not [n for n, _ in objects(repo, "tmp").items()], "prune left staged files of crashed writers"
    assert_restores(repo, s0, s0_state, tmp_path / "restore-s0-end", same_tree, "after prune")


def test_store_workers_exit_when_only_the_backup_process_is_killed(tmp_path: Path, big: BigData) -> None:
    """The OOM killer kills one process, not the group: the workers must notice and stop."""
    repo = init_repo(tmp_path / "repo")
    proc = start_cli("backup", "--repo", repo, "--path", big.path, "--app-id", APP, log=tmp_path / "b")
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while proc.poll() is None and time.monotonic() < deadline:
        workers = _children(proc)
        if workers and objects(repo, "data"):  # workers run and have stored a pack: mid-run
            break
        time.sleep(0.005)
    assert proc.poll() is None and workers, "the backup ended before it could be killed mid-run"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    survivors = wait_group_gone(proc.pid, timeout=20)
    if survivors:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not survivors, f"store workers {survivors} kept running after their parent died"
    staged = [n for n in objects(repo, "tmp") if n.startswith("pack-")]
    assert not staged, f"the workers left staged packs behind: {staged}"
    assert run_cli("check", "--repo", repo, "--read-data").code == 0


def indexed_data_bytes(repo: Path) -> int:
    """Plaintext bytes of the data blobs the repository's index lists."""
    r = Repository.open(LocalBackend(repo), PASSWORD.encode())
    index = r.index()
    return sum(loc.raw_length for loc in map(index.get, index.blob_ids()) if loc is not None and loc.type == DATA)


def unindexed_data_bytes(repo: Path) -> int:
    """Plaintext bytes of data blobs in stored packs no index names (a killed backup's last packs)."""
    r = Repository.open(LocalBackend(repo), PASSWORD.encode())
    return sum(e.raw_length for _, entries in r.unindexed_packs() for e in entries if e.type == DATA)


def test_index_written_during_a_killed_backup_is_reused(tmp_path: Path, big: BigData) -> None:
    """Small packs (config `pack_size`) make a backup write an index file while it runs; kill it
    right after: the next backup must store only what that index does not list."""
    repo = init_repo(tmp_path / "repo", pack_size=512 * 1024)
    proc = start_cli("backup", "--repo", repo, "--path", big.path, "--app-id", APP, log=tmp_path / "b")
    k = kill_when(proc, lambda: bool(objects(repo, "index")), "first index")
    assert k.killed, "the backup finished before it wrote its first index"
    assert not objects(repo, "snapshots")
    indexed = indexed_data_bytes(repo)
    assert indexed > 0, "the index written before the kill lists no data"
    stored = indexed + unindexed_data_bytes(repo)  # packs stored after that index are reused too
    check_clean(repo, "after the kill")
    final = backup(repo, big.path)
    assert final["added_bytes"] <= big.added_bytes - stored + (1 << 20), (final, indexed, stored)
    assert final["bytes"] == big.bytes
    check_clean(repo, "after the next backup")


def test_packs_stored_before_a_kill_are_reused(tmp_path: Path, big: BigData) -> None:
    """Kill a first backup once most of its data is in stored packs; the next backup must not
    store it all again (`storeworker`: "a crash loses at most the last few packs")."""
    repo = init_repo(tmp_path / "repo")

    def most_data_stored_no_index_yet() -> bool:
        return sum(objects(repo, "data").values()) >= 0.6 * big.stored_bytes and not objects(repo, "index")

    proc = start_cli("backup", "--repo", repo, "--path", big.path, "--app-id", APP, log=tmp_path / "b")
    k = kill_when(proc, most_data_stored_no_index_yet, "60% stored")
    assert k.killed, "the backup finished before 60 % of its data was stored"
    assert not objects(repo, "snapshots")
    stored_before = du(repo)
    final = backup(repo, big.path)
    growth = du(repo) - stored_before
    assert final["added_bytes"] < 0.5 * big.added_bytes, (
        f"the backup after the kill added {final['added_bytes']} of {big.added_bytes} bytes"
        f" although {stored_before} bytes were already stored"
    )
    assert growth < 0.5 * big.stored_bytes


def test_waiting_prune_proceeds_when_the_backup_it_waits_for_is_killed(tmp_path: Path, data: Path, same_tree) -> None:
    """A backup holds its shared lock (it waits on standard input); a prune waits for it; the
    backup is killed: the prune must take over at once, without `unlock`."""
    repo = init_repo(tmp_path / "repo")
    s0 = backup(repo, data)["snapshot_id"]
    proc = start_cli("backup", "--repo", repo, "--stdin", "dump.sql", "--app-id", "db", log=tmp_path / "b", stdin=True)
    deadline = time.monotonic() + 30
    while not objects(repo, "locks") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.stdin is not None and objects(repo, "locks"), "the backup never took its lock"
    proc.stdin.write(os.urandom(8 << 20))  # new data: its store workers start
    proc.stdin.flush()
    while not _children(proc) and time.monotonic() < deadline:
        time.sleep(0.01)
    prune = start_cli("prune", "--repo", repo, "--lock-wait", "120", log=tmp_path / "p")
    time.sleep(3)
    assert prune.poll() is None, f"prune did not wait for the running backup: {(tmp_path / 'p.err').read_text()}"
    assert proc.poll() is None
    k = kill_group(proc, "backup")
    proc.stdin.close()
    assert k.killed and k.workers
    t0 = time.monotonic()
    assert prune.wait(timeout=120) == 0, (tmp_path / "p.err").read_text()
    assert time.monotonic() - t0 < 15, "the prune kept waiting for the dead backup's lock"
    assert snapshot_ids(repo) == [s0]
    check_clean(repo, "after prune")
    assert not objects(repo, "tmp")
    result = run_cli("restore", s0, "--repo", repo, "--target", tmp_path / "restored")
    assert result.code == 0, result.err
    same_tree(data, tmp_path / "restored")


# ---- prune ------------------------------------------------------------------------------------


@dataclass
class PruneRepo:
    repo: Path
    kept: dict[str, Path]  # snapshot id -> copy of the data it holds
    duration: float  # wall time of `prune --max-unused 1` on a copy
    startup: float  # wall time of `snapshots`: start-up and unlocking the key, before any prune work


@pytest.fixture(scope="module")
def prune_repo(tmp_path_factory: pytest.TempPathFactory) -> PruneRepo:
    """Five backups with changes in between, the oldest three forgotten: prune has work to do."""
    base = tmp_path_factory.mktemp("prune")
    repo = init_repo(base / "repo")
    work = base / "data"
    dataset.create(str(work), size_mb=PRUNE_MB, seed=11)
    states: dict[str, Path] = {}
    for seed in range(2, 7):
        sid = backup(repo, work)["snapshot_id"]
        states[sid] = copy_tree(work, base / f"state-{seed}") if seed >= 5 else work
        mutate(work, seed)
    result = run_cli("forget", "--repo", repo, "--keep-last", "2", "--json")
    assert result.code == 0, result.err
    assert len(result.json()["removed"]) == 3
    kept = {sid: states[sid] for sid in snapshot_ids(repo)}
    assert len(kept) == 2
    scratch = copy_tree(repo, base / "measure")
    t0 = time.monotonic()
    result = run_cli("prune", "--repo", scratch, "--max-unused", "1", "--json")
    duration = time.monotonic() - t0
    assert result.code == 0, result.err
    report = result.json()
    assert report["packs_repacked"] and report["packs_deleted"], report  # the kill points below hit real work
    subprocess.run(["rm", "-rf", "--", str(scratch)], check=True)
    t0 = time.monotonic()
    snapshot_ids(repo)
    startup = min(time.monotonic() - t0, 0.8 * duration)
    return PruneRepo(repo, kept, duration, startup)


def test_prune_killed_at_many_points(tmp_path: Path, prune_repo: PruneRepo, same_tree) -> None:
    # timed kills spread over a measured run (a short prune spends most of it starting up), then
    # kills at each step of its work: lock taken, a repacked pack staged, then stored, the new
    # index written, the first old index deleted, the first old pack deleted
    plan: list[tuple[str, Callable[[subprocess.Popen, Path], Kill]]] = []
    for frac in spread(PRUNE_CRASH_POINTS, 0.1, 1.0, power=1.0):
        label = f"timed kill at {frac:.2f} of {prune_repo.duration:.2f}s"
        plan.append((label, lambda p, r, d=frac * prune_repo.duration, lb=label: kill_after(p, d, lb)))
    packs0 = set(objects(prune_repo.repo, "data"))
    index0 = set(objects(prune_repo.repo, "index"))
    events: list[tuple[str, Callable[[Path], bool]]] = [
        ("kill once the lock is taken", lambda r: bool(objects(r, "locks"))),
        ("kill at the first staged pack", lambda r: any(n.startswith("pack-") for n in objects(r, "tmp"))),
        ("kill at the first repacked pack", lambda r: bool(set(objects(r, "data")) - packs0)),
        ("kill once the new index is written", lambda r: bool(set(objects(r, "index")) - index0)),
        ("kill at the first deleted index", lambda r: bool(index0 - set(objects(r, "index")))),
        ("kill at the first deleted pack", lambda r: bool(packs0 - set(objects(r, "data")))),
    ]
    for label, condition in events:
        plan.append((label, lambda p, r, c=condition, lb=label: kill_when(p, lambda: c(r), lb)))

    states_seen: set[str] = set()
    for n, (label, kill) in enumerate(plan):
        repo = copy_tree(prune_repo.repo, tmp_path / f"repo-{n}")
        proc = start_cli("prune", "--repo", repo, "--max-unused", "1", log=tmp_path / f"p{n}")
        k = kill(proc, repo)
        assert k.returncode in (0, -signal.SIGKILL), (tmp_path / f"p{n}.err").read_text()
        state = (
            "finished"
            if k.returncode == 0
            else "new index"
            if set(objects(repo, "index")) - index0
            else "repacking"
            if set(objects(repo, "data")) - packs0 or objects(repo, "tmp")
            else "early"
        )
        states_seen.add(state)
        print(f"{label}: exit {k.returncode}, {state}")
        check_clean(repo, label)
        for m, (sid, original) in enumerate(sorted(prune_repo.kept.items())):
            assert_restores(repo, sid, original, tmp_path / f"restore-{n}-{m}", same_tree, label)
        # a second prune (no `unlock`: the killed one's exclusive lock is stale) finishes the job
        result = run_cli("prune", "--repo", repo, "--max-unused", "1", "--json")
        assert result.code == 0, f"{label}: prune after the kill failed: {result.err}"
        result = run_cli("check", "--repo", repo, "--read-data", "--json")
        assert result.code == 0, f"{label}: {result.out}{result.err}"
        assert not result.json()["notes"], f"{label}: {result.json()['notes']}"
        assert not objects(repo, "tmp"), f"{label}: staged files left: {objects(repo, 'tmp')}"
        assert set(objects(repo, "snapshots")) == set(prune_repo.kept)
        subprocess.run(["rm", "-rf", "--", str(repo)], check=True)
    assert {"repacking", "new index"} <= states_seen, states_seen
