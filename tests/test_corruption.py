"""Damaged repositories: what `check`, `restore` and `export` report, and what they refuse.

A module repository holds two apps: "main" (the 6 MiB test data set) and
"other" (a few random files, backed up separately, so it shares no pack or
index with "main"). Each test damages its own copy: a flipped byte in a pack,
a truncated or deleted pack, a damaged or deleted index, a damaged snapshot,
damaged key files; and crafted snapshots whose trees try to write outside the
restore target.
"""

from __future__ import annotations

import json
import os
import random
import stat
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import treecompare
from sidecar.repo import tree
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.blobwriter import BlobWriter
from sidecar.repo.index import BlobLocation
from sidecar.repo.pack import DATA, TREE, pack_object_name
from sidecar.repo.repository import Repository
from sidecar.repo.snapshot import SnapshotRecord, SourceRecord, SourceStats, new_backup_id
from tests.conftest import PASSWORD, copy_tree, run_cli

OTHER_PASSWORD = "a second passphrase for the same repository"


# ---- the repository ----------------------------------------------------------------------


@dataclass
class Base:
    repo: Path
    main: str  # snapshot ids
    other: str
    main_data: Path
    other_data: Path
    main_index: str  # the index file each backup wrote
    other_index: str


def _ids(repo: Path, kind: str) -> set[str]:
    return {name for _, _, names in os.walk(repo / kind) for name in names}


def _backup(repo: Path, src: Path, app: str) -> str:
    result = run_cli("backup", "--repo", repo, "--path", src, "--app-id", app, "--json")
    assert result.code == 0, result.err
    return result.json()["snapshot_id"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, dataset_template: Path) -> Base:
    root = tmp_path_factory.mktemp("corruption")
    repo = root / "repo"
    assert run_cli("init", "--repo", repo).code == 0
    main_data = copy_tree(dataset_template, root / "main")
    other_data = root / "other"
    rng = random.Random(99)
    (other_data / "sub").mkdir(parents=True)
    for name, size in (("big.bin", 700_000), ("sub/small.bin", 40_000), ("note.txt", 100)):
        (other_data / name).write_bytes(rng.randbytes(size))
    main = _backup(repo, main_data, "main")
    index_after_main = _ids(repo, "index")
    other = _backup(repo, other_data, "other")
    (main_index,) = index_after_main
    (other_index,) = _ids(repo, "index") - index_after_main
    return Base(repo, main, other, main_data, other_data, main_index, other_index)


@pytest.fixture
def repo(base: Base, tmp_path: Path) -> Path:
    """A private copy of the module repository, free to damage."""
    return copy_tree(base.repo, tmp_path / "repo")


def open_repo(path: Path, password: str = PASSWORD) -> Repository:
    return Repository.open(LocalBackend(path), password.encode())


def _shown(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def file_blobs(r: Repository, snapshot_id: str) -> dict[str, list[bytes]]:
    """path -> data blob ids of every regular file of a snapshot."""
    out = {}
    for source in r.load_snapshot(snapshot_id).sources:
        for entry in tree.read_tree([bytes.fromhex(h) for h in source.tree], r.load_blob):
            if entry["type"] == tree.FILE and entry.get("blobs"):
                out[_shown(tree.entry_path(entry))] = [bytes.fromhex(h) for h in entry["blobs"]]
    return out


def packs_used(r: Repository, snapshot_id: str) -> set[str]:
    """Every pack holding a listing or data blob of the snapshot."""
    index = r.index()
    blobs = [b for bs in file_blobs(r, snapshot_id).values() for b in bs]
    for source in r.load_snapshot(snapshot_id).sources:
        blobs += [bytes.fromhex(h) for h in source.tree]
    return {index.get(b).pack_id for b in blobs}  # type: ignore[union-attr]


def hard_links(r: Repository, snapshot_id: str) -> dict[str, str]:
    """path -> the path it is a hard link of."""
    out = {}
    for source in r.load_snapshot(snapshot_id).sources:
        for entry in tree.read_tree([bytes.fromhex(h) for h in source.tree], r.load_blob):
            if entry["type"] == tree.HARDLINK:
                out[_shown(tree.entry_path(entry))] = _shown(tree.get_name(entry, "link") or b"")
    return out


@dataclass
class Target:
    path: str  # the file whose data is damaged
    pack: str
    loc: BlobLocation
    pack_files: set[str]  # every file of "main" with data in that pack
    links_to_pack_files: set[str]  # hard links to those


def target_blob(repo: Path, snapshot_id: str) -> Target:
    """The biggest file of the snapshot, and its first blob (a group of its own)."""
    r = open_repo(repo)
    files = file_blobs(r, snapshot_id)
    index = r.index()
    path = max(files, key=lambda p: sum(index.get(b).raw_length for b in files[p]))  # type: ignore[union-attr]
    blob = files[path][0]
    loc = index.get(blob)
    assert loc is not None and loc.type == DATA
    group = [b for b, other in index.entries_by_pack()[loc.pack_id] if other.offset == loc.offset]
    assert group == [blob], "the chosen blob shares its group"
    users = {p for p, blobs in files.items() if blob in blobs}
    assert users == {path}, users
    pack_files = {p for p, blobs in files.items() if any(index.get(b).pack_id == loc.pack_id for b in blobs)}  # type: ignore[union-attr]
    links = {p for p, first in hard_links(r, snapshot_id).items() if first in pack_files}
    return Target(path, loc.pack_id, loc, pack_files, links)


def pack_path(repo: Path, pack_id: str) -> Path:
    return repo / pack_object_name(pack_id)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def affected(report: dict) -> dict[str, set[str]]:
    """snapshot id -> affected paths, from `check --json`."""
    return {a["snapshot"]: {e["path"] for e in a["entries"]} for a in report["affected"]}


def assert_clean_failure(result, *words: str) -> None:
    """Exit 1 with a reported error, never a traceback or an 'unexpected' error."""
    assert result.code == 1, (result.code, result.out, result.err)
    assert "Traceback" not in result.err and "unexpected" not in result.err, result.err
    for word in words:
        assert word.lower() in (result.out + result.err).lower(), (word, result.out, result.err)


def restore_problems(repo: Path, snapshot: str, original: Path, target: Path):
    result = run_cli("restore", snapshot, "--repo", repo, "--target", target)
    return result, treecompare.compare(str(original), str(target))


# ---- damaged packs -----------------------------------------------------------------------------


def test_flipped_byte_in_a_data_pack(repo: Path, base: Base, tmp_path: Path, same_tree) -> None:
    t = target_blob(repo, base.main)
    assert t.pack not in packs_used(open_repo(repo), base.other)
    flip_byte(pack_path(repo, t.pack), t.loc.offset + t.loc.length // 2)

    structure = run_cli("check", "--repo", repo)  # does not read data: may or may not notice
    assert structure.code in (0, 1) and "Traceback" not in structure.err, structure.err

    result = run_cli("check", "--repo", repo, "--read-data")
    assert_clean_failure(result, t.pack, "BACKUP_CORRUPTED", base.main[:8], t.path)
    assert base.other[:8] not in result.out
    report = run_cli("check", "--repo", repo, "--read-data", "--json")
    assert report.code == 1
    doc = report.json()
    assert not doc["ok"] and doc["damaged_blobs"] == 1
    assert any(t.pack in e for e in doc["errors"]), doc["errors"]
    assert affected(doc) == {base.main: {t.path}}

    # restore: everything but the damaged file, and says which one and why
    result, problems = restore_problems(repo, base.main, base.main_data, tmp_path / "main")
    assert_clean_failure(result, "BACKUP_CORRUPTED", t.path)
    assert problems == [f"missing   {t.path}"], problems
    # the other app's snapshot uses other packs: unaffected
    result = run_cli("restore", base.other, "--repo", repo, "--target", tmp_path / "other")
    assert result.code == 0, result.err
    same_tree(base.other_data, tmp_path / "other")


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_deleted_pack(repo: Path, base: Base, tmp_path: Path, damage: str, same_tree) -> None:
    t = target_blob(repo, base.main)
    assert t.pack not in packs_used(open_repo(repo), base.other)
    path = pack_path(repo, t.pack)
    if damage == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.unlink()

    result = run_cli("check", "--repo", repo)  # structure only is enough to see this
    assert_clean_failure(result, t.pack, "BACKUP_CORRUPTED", base.main[:8])
    if damage == "delete":
        assert "missing" in result.out
    assert base.other[:8] not in result.out
    assert any(p in result.out for p in t.pack_files), "no damaged file is named"
    doc = run_cli("check", "--repo", repo, "--json").json()
    assert affected(doc) == {base.main: t.pack_files}

    result, problems = restore_problems(repo, base.main, base.main_data, tmp_path / "main")
    assert_clean_failure(result, "BACKUP_CORRUPTED", t.path)
    lost = {f"missing   {p}" for p in t.pack_files | t.links_to_pack_files}
    assert lost <= set(problems), sorted(lost - set(problems))[:10]
    rest = set(problems) - lost  # the rest is identical; hard-link groups differ only if one is lost
    assert all(p.startswith("hard links differ") for p in rest) and bool(rest) == bool(t.links_to_pack_files), rest
    result = run_cli("restore", base.other, "--repo", repo, "--target", tmp_path / "other")
    assert result.code == 0, result.err
    same_tree(base.other_data, tmp_path / "other")


# ---- damaged or missing index ------------------------------------------------------------------


def test_damaged_index_is_named(repo: Path, base: Base) -> None:
    flip_byte(repo / "index" / base.main_index, 40)
    result = run_cli("check", "--repo", repo)
    assert_clean_failure(result, base.main_index, "BACKUP_CORRUPTED")


def test_damaged_index_check_still_reports(repo: Path, base: Base) -> None:
    flip_byte(repo / "index" / base.main_index, 40)
    result = run_cli("check", "--repo", repo, "--json")
    assert result.code == 1
    doc = result.json()  # a report, not just an error line
    assert any(base.main_index in e for e in doc["errors"]), doc["errors"]
    assert base.main in affected(doc) and base.other not in affected(doc)


def test_damaged_index_leaves_other_snapshots_restorable(repo: Path, base: Base, tmp_path: Path, same_tree) -> None:
    flip_byte(repo / "index" / base.main_index, 40)
    result = run_cli("restore", base.other, "--repo", repo, "--target", tmp_path / "other")
    # complete, but "with warnings" (exit 3): the damaged index is named, never silently ignored
    assert result.code == 3, result.err
    assert base.main_index in result.err and "Traceback" not in result.err
    same_tree(base.other_data, tmp_path / "other")


def test_deleted_index(repo: Path, base: Base, tmp_path: Path, same_tree) -> None:
    (repo / "index" / base.main_index).unlink()
    result = run_cli("check", "--repo", repo)
    assert_clean_failure(result, base.main[:8], "missing", "not in any index")
    doc = run_cli("check", "--repo", repo, "--json").json()
    assert set(affected(doc)) == {base.main}
    assert any("not in any index" in n for n in doc["notes"]), doc["notes"]
    result = run_cli("restore", base.main, "--repo", repo, "--target", tmp_path / "main")
    assert_clean_failure(result, "BACKUP_CORRUPTED")
    result = run_cli("restore", base.other, "--repo", repo, "--target", tmp_path / "other")
    assert result.code == 0, result.err
    same_tree(base.other_data, tmp_path / "other")


# ---- damaged snapshot --------------------------------------------------------------------------


def test_damaged_snapshot_is_named_and_others_restore(repo: Path, base: Base, tmp_path: Path, same_tree) -> None:
    flip_byte(repo / "snapshots" / base.main, 30)
    result = run_cli("check", "--repo", repo)
    assert_clean_failure(result, base.main, "BACKUP_CORRUPTED")
    result = run_cli("restore", base.main, "--repo", repo, "--target", tmp_path / "main")
    assert_clean_failure(result, "BACKUP_CORRUPTED")
    result = run_cli("restore", base.other, "--repo", repo, "--target", tmp_path / "other")
    assert result.code == 0, result.err
    same_tree(base.other_data, tmp_path / "other")


def test_damaged_snapshot_does_not_block_other_apps(repo: Path, base: Base, tmp_path: Path) -> None:
    flip_byte(repo / "snapshots" / base.main, 30)
    # each command completes, with warnings (exit 3) naming the damaged snapshot
    result = run_cli("backup", "--repo", repo, "--path", base.other_data, "--app-id", "other", "--json")
    assert result.code == 3, result.err
    assert base.main in result.err and "Traceback" not in result.err
    result = run_cli("restore", "latest", "--app-id", "other", "--repo", repo, "--target", tmp_path / "other")
    assert result.code == 3, result.err
    assert base.main in result.err
    result = run_cli("snapshots", "--repo", repo, "--json")
    assert base.other in {s["id"] for s in json.loads(result.out or "[]")}, result.err


# ---- damaged key files ------------------------------------------------------------------------


def _damage_key(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flipped-byte":
        raw[len(raw) // 2] ^= 0xFF
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "bad-base64":  # a character base64 does not have, inside the wrapped key
        doc = json.loads(raw)
        doc["data"] = doc["data"][:10] + "!" + doc["data"][11:]
        raw = bytearray(json.dumps(doc, indent=1).encode())
    elif how == "changed-ciphertext":  # still valid base64: fails authentication
        doc = json.loads(raw)
        doc["data"] = doc["data"][:10] + ("A" if doc["data"][10] != "A" else "B") + doc["data"][11:]
        raw = bytearray(json.dumps(doc, indent=1).encode())
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "how",
    [
        "flipped-byte",
        "truncated",
        "changed-ciphertext",
        "bad-base64",
    ],
)
def test_damaged_only_key_fails_clearly(repo: Path, how: str) -> None:
    (key,) = (repo / "keys").iterdir()
    _damage_key(key, how)
    result = run_cli("snapshots", "--repo", repo)
    assert_clean_failure(result, "key")
    assert result.err.count("\n") == 1 and result.err.startswith("error: "), result.err


@pytest.mark.parametrize(
    "damaged",
    [
        pytest.param(0, id="first-listed-key-damaged"),
        pytest.param(1, id="second-listed-key-damaged"),
    ],
)
def test_second_key_still_opens_when_one_is_damaged(repo: Path, base: Base, damaged: int, tmp_path: Path) -> None:
    result = run_cli("key", "add", "--repo", repo, env={"BACKUP_NEW_ENCRYPTION_KEY": OTHER_PASSWORD})
    assert result.code == 0, result.err
    keys = sorted((repo / "keys").iterdir())  # the order Repository.open tries them in
    assert len(keys) == 2
    listed = run_cli("key", "list", "--repo", repo, "--json").json()
    first_key = next(k["id"] for k in listed if k["current"])  # the one PASSWORD opens
    victim = keys[damaged]
    _damage_key(victim, "flipped-byte")
    password = OTHER_PASSWORD if victim.name == first_key else PASSWORD
    result = run_cli("snapshots", "--repo", repo, "--json", password=password)
    assert result.code == 0, result.err
    assert {s["id"] for s in result.json()} == {base.main, base.other}
    result = run_cli("restore", base.other, "--repo", repo, "--target", tmp_path / "other", password=password)
    assert result.code == 0, result.err


# ---- malicious snapshot trees ---------------------------------------------------------------------

MTIME = 1_700_000_000_000_000_000


def craft_snapshot(repo_path: Path, entries: list[dict]) -> str:
    """Store a snapshot whose listing is exactly `entries`, the way a backup session does."""
    r = open_repo(repo_path)
    stats = SourceStats()
    writer = BlobWriter(r, [stats], workers=1)
    listing = tree.TreeWriter(r.chunker, lambda data: writer.store(TREE, data, 0))
    try:
        for spec in entries:
            entry = {"mode": 0o755 if spec["type"] == tree.DIR else 0o644, "uid": 0, "gid": 0, "mtime_ns": MTIME}
            entry.update(spec)
            if entry["type"] == tree.FILE:
                content = entry.pop("content")
                entry["size"] = len(content)
                entry["blobs"] = [writer.store(DATA, content, 0).hex()]
            listing.add(entry)
        ids = listing.finish()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    now = datetime.now(UTC)
    record = SnapshotRecord(
        backup_id=new_backup_id(now),
        app_id="evil",
        app_name="evil",
        time=now,
        backup_type="full",
        hostname="attacker",
        sources=[SourceRecord("/srv/evil", "path", [i.hex() for i in ids], stats)],
    )
    return r.save_json("snapshots", record.to_json())


EVIL = b"written by a malicious snapshot\n"


def evil_entries(case: str, outside: Path) -> list[dict]:
    root = {"path": ".", "type": tree.DIR}
    if case == "dotdot":
        return [root, {"path": "../evil", "type": tree.FILE, "content": EVIL}]
    if case == "absolute":
        return [root, {"path": f"{outside}/abs-evil", "type": tree.FILE, "content": EVIL}]
    if case == "below-symlink":  # a file "inside" a symlink to a directory outside
        return [
            root,
            {"path": "link", "type": tree.SYMLINK, "target": str(outside)},
            {"path": "link/evil", "type": tree.FILE, "content": EVIL},
        ]
    if case == "dir-replaced-by-symlink":  # the same path twice: a directory, then a symlink
        return [
            root,
            {"path": "d", "type": tree.DIR, "mode": 0o777},
            {"path": "d", "type": tree.SYMLINK, "target": str(outside)},
            {"path": "d/evil", "type": tree.FILE, "content": EVIL},
        ]
    if case == "hardlink-through-symlink":  # a hard link to a file outside, reached through a symlink
        return [
            root,
            {"path": "link", "type": tree.SYMLINK, "target": str(outside)},
            {"path": "h", "type": tree.HARDLINK, "link": "link/victim"},
        ]
    raise AssertionError(case)


CASES = ["dotdot", "absolute", "below-symlink", "dir-replaced-by-symlink", "hardlink-through-symlink"]


@dataclass
class Evil:
    repo: Path
    snapshot: str
    outside: Path  # a directory outside the target, holding one file
    victim: Path
    workdir: Path  # the target's parent: must hold nothing but the target afterwards


@pytest.fixture
def evil(request: pytest.FixtureRequest, tmp_path: Path) -> Evil:
    case = request.param
    repo = tmp_path / "repo"
    assert run_cli("init", "--repo", repo).code == 0
    outside = tmp_path / "somewhere"
    outside.mkdir(mode=0o700)
    victim = outside / "victim"
    victim.write_bytes(b"not yours\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    return Evil(repo, craft_snapshot(repo, evil_entries(case, outside)), outside, victim, workdir)


def assert_nothing_outside(e: Evil, target: Path) -> None:
    assert sorted(os.listdir(e.outside)) == ["victim"], os.listdir(e.outside)
    assert e.victim.read_bytes() == b"not yours\n"
    assert stat.S_IMODE(e.outside.stat().st_mode) == 0o700, oct(e.outside.stat().st_mode)
    assert os.listdir(e.workdir) in ([], [target.name]), os.listdir(e.workdir)
    assert not os.path.lexists("/abs/evil") and not os.path.lexists("/evil")
    victim_inode = (e.victim.stat().st_dev, e.victim.stat().st_ino)
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert (st.st_dev, st.st_ino) != victim_inode, f"{name} in the target is the outside file"


@pytest.mark.parametrize("evil", CASES, indirect=True)
def test_restore_refuses_malicious_tree(evil: Evil) -> None:
    target = evil.workdir / "target"
    result = run_cli("restore", evil.snapshot, "--repo", evil.repo, "--target", target)
    assert_nothing_outside(evil, target)
    assert_clean_failure(result, "unsafe")


@pytest.mark.parametrize("evil", CASES, indirect=True)
def test_export_refuses_malicious_tree(evil: Evil) -> None:
    out = evil.workdir / "evil.tar"
    result = run_cli("export", evil.snapshot, "--repo", evil.repo, "--output", out)
    produced = sorted(os.listdir(evil.workdir))
    names = []
    if out.exists():
        with tarfile.open(out) as tar:
            names = tar.getnames()
    assert produced == [], f"export wrote {produced} holding {names}"
    assert_clean_failure(result, "unsafe")
