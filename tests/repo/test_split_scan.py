"""An incremental backup of a large tree compares its second half in a forked child:
the listing must be byte for byte the one a single process makes, wherever the cut
falls, whatever changed on either side, and when the child fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.treecompare import compare
from sidecar.errors import QuotaExceeded
from sidecar.repo import backup as backup_module
from sidecar.repo import forked, tree
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession, cut_texts, order_key, split_chunk
from sidecar.repo.chunker import ChunkerParams
from sidecar.repo.repository import Repository
from sidecar.repo.restore import restore_snapshot
from sidecar.repo.walk import Walker


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"k")


@pytest.fixture
def split(monkeypatch):
    """Split every incremental scan (any size, any machine)."""
    monkeypatch.setattr(backup_module, "SPLIT_MIN_ENTRIES", 1)
    monkeypatch.setattr(forked, "available", lambda: True)


def make_tree(root: Path) -> None:
    for d in range(6):
        sub = root / f"d{d}" / ("deep" if d % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(12):
            (sub / f"f{f:02d}.txt").write_bytes(b"%d-%d\n" % (d, f) * (f + 1))
    (root / "d1" / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "a.b").write_text("sorts after d? no: before")
    (root / 'quote"name').write_text("json escapes this name")
    (root / "back\\slash").write_text("and this one")
    os.link(root / "d0" / "f00.txt", root / "d5" / "hardlink-to-d0")
    os.symlink("d0/f01.txt", root / "link")
    (root / "empty-dir").mkdir()


def change_tree(root: Path) -> None:
    (root / "d0" / "f03.txt").write_text("changed in the first half")
    (root / "d5" / "deep" / "f04.txt").write_text("changed in the second half")
    (root / "d4" / "f05.txt").unlink()
    (root / "d2" / "new.txt").write_text("new")
    (root / "d3" / "deep" / "new-dir").mkdir()
    os.link(root / "d5" / "deep" / "f06.txt", root / "d0" / "second-link")  # a new pair across the cut
    (root / "empty-dir").rmdir()
    (root / "empty-dir").write_text("a directory became a file")


def back_up(repo: Repository, root: Path, backup_type: str = "incremental"):
    with BackupSession(repo, BackupOptions(app_id="t", backup_type=backup_type)) as session:
        session.add_tree("data", str(root))
        return session.commit()


def test_iter_from_and_iter_before_are_the_tail_and_the_head_of_the_walk(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root)
    walker = Walker(os.fsencode(root))
    walk = [rel for rel, _, _ in walker]
    starts = (
        walk + [rel + b"0" for rel in walk] + [b"d1/zzz/deeper", b"a", b"zzzz", b"d3/deep/f00.txt/x", b"d0/f00.txt/x"]
    )
    for start in starts:
        tail = [rel for rel, _, _ in walker.iter_from(start)]
        head = [rel for rel, _, _ in walker.iter_before(start)]
        assert tail == [rel for rel in walk if order_key(rel) >= order_key(start)], start
        assert head == [rel for rel in walk if order_key(rel) < order_key(start)], start
        assert head + tail == walk, start


def test_split_chunk_cuts_nearest_half_the_bytes():
    assert split_chunk([100]) == 0  # one chunk: not cut at a chunk
    assert split_chunk([]) == 0
    assert split_chunk([10, 10]) == 1
    assert split_chunk([10, 10, 10, 10]) == 2
    assert split_chunk([1, 1, 1, 10]) == 3  # 3 before, 10 after: nearer than 2 and 11
    assert split_chunk([10, 1, 1, 1]) == 1
    assert split_chunk([5, 5, 5]) == 1  # 5 and 10 before are as near: the earlier
    # a listing of the bench app's volume (23 chunks, bytes): its middle chunk (11) would give
    # the first half 41.5 % of the lines, the chunk nearest half the bytes 51.5 %
    sizes = [1881409, 1227653, 646278, 1574960, 2209417, 1095698, 2493552, 2484458, 1908887, 827413, 1357240]
    sizes += [3039004, 1257144, 2132984, 1693388, 1316355, 1300901, 2976029, 2554618, 2359567, 2402574]
    sizes += [2535580, 1484801]
    at = split_chunk(sizes)
    assert at == 13 and abs(sum(sizes[:at]) / sum(sizes) - 0.5) < 0.03


def test_cut_texts_cuts_the_lines_where_asked():
    import random

    rng = random.Random(3)
    lines = [b"line %d" % i + b"x" * rng.randrange(5) for i in range(40)]
    lines[9] = b""  # an empty line counts like any other
    for _ in range(40):
        bounds = sorted(rng.sample(range(1, len(lines)), rng.randrange(0, 8)))
        texts = [b"\n".join(lines[a:b]) for a, b in zip([0, *bounds], [*bounds, len(lines)], strict=True)]
        for mid in range(1, len(lines)):
            head, tail = cut_texts(texts, mid)
            assert [x for t in head for x in t.split(b"\n")] == lines[:mid], (bounds, mid)
            assert [x for t in tail for x in t.split(b"\n")] == lines[mid:], (bounds, mid)


@pytest.mark.parametrize("lost", ["d0/f02.txt", "d5/deep/f03.txt"])
def test_a_file_whose_data_left_the_repository_is_read_again_in_either_half(repo, tmp_path, split, lost):
    """Each process looks up the blobs of its half's unchanged files in the index: a file
    whose pack is gone is read again, on either side, and only that file."""
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root)
    back_up(repo, root, "full")
    (root / lost).write_bytes(os.urandom(200_000))  # the only new data: a pack of its own
    parent = back_up(repo, root)
    ids = [bytes.fromhex(h) for h in parent.source("data").tree]
    index = repo.index()
    packs = {
        e["path"]: {index.get(bytes.fromhex(b)).pack_id for b in e["blobs"]}
        for e in tree.read_tree(ids, repo.load_blob)
        if e["type"] == "file"
    }
    (pack,) = packs[lost]
    assert [path for path, held in packs.items() if pack in held] == [lost]
    repo_root = tmp_path / "repo"
    for doc in (repo_root / "index").iterdir():
        doc.unlink()
    for path in (repo_root / "data").rglob(pack):
        path.unlink()
    fresh = Repository.open(LocalBackend(repo_root), b"k")  # indexes the packs that are left as it starts
    again = back_up(fresh, root)
    assert again.parent == parent.id
    assert again.totals.reused_files == parent.totals.files - 1
    restore_snapshot(Repository.open(LocalBackend(repo_root), b"k"), again, str(tmp_path / "restored"))
    assert compare(str(root), str(tmp_path / "restored")) == []


@pytest.mark.parametrize("chunks", ["one", "many"])
@pytest.mark.parametrize("cut", ["first", "third", "middle", "last"])
def test_a_split_incremental_lists_what_one_process_lists(tmp_path, split, monkeypatch, cut, chunks):
    """A listing of one chunk is cut at a line (`split_index`), one of many chunks where a
    chunk starts (`split_chunk`): lines go on from one chunk to the next, and big.bin's line
    (3 000 blob ids) spans many, so a cut that falls inside it is made at a line instead."""
    small = ChunkerParams(min_size=256, avg_size=1024, max_size=4096)  # the listing: ~20 chunks
    repo = Repository.init(LocalBackend(tmp_path / "repo"), b"k", chunker=small if chunks == "many" else None)
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root)
    first = back_up(repo, root, "full")
    assert (len(first.source("data").tree) > 10) == (chunks == "many")
    cuts = {"first": lambda n: 1, "third": lambda n: n // 3, "middle": lambda n: n // 2, "last": lambda n: n - 1}
    monkeypatch.setattr(backup_module, "split_index", cuts[cut])
    monkeypatch.setattr(backup_module, "split_chunk", lambda sizes: cuts[cut](len(sizes)))
    plans = []
    plan = backup_module._TreeScan._split_plan

    def read_plan(self):  # the first part is read as the walk goes: here, all of it at once
        made = plan(self)
        if made is not None:
            plans.append((list(made[0]), made[1], made[2]))
            return plans[-1]
        return None

    monkeypatch.setattr(backup_module._TreeScan, "_split_plan", read_plan)
    unchanged = back_up(repo, root)
    (made,) = plans  # the unchanged backup's
    lines = [line for text in made[0] for line in text.split(b"\n")]
    assert lines + [line for text in made[1] for line in text.split(b"\n")] == list(
        tree.read_lines([bytes.fromhex(h) for h in first.source("data").tree], repo.load_blob)
    )
    assert lines and made[2] == backup_module._line_path(made[1][0].partition(b"\n")[0])
    assert unchanged.source("data").tree == first.source("data").tree  # byte for byte the same listing
    # every file (the hard link's second name is a link entry)
    assert unchanged.totals.reused_files == first.totals.files
    change_tree(root)
    changed = back_up(repo, root)
    monkeypatch.setattr(backup_module, "SPLIT_MIN_ENTRIES", 10**9)
    fresh = back_up(repo, root, "full")
    assert changed.source("data").tree == fresh.source("data").tree
    assert changed.totals.files == fresh.totals.files and changed.totals.dirs == fresh.totals.dirs
    restore_snapshot(repo, changed, str(tmp_path / "restored"))
    assert compare(str(root), str(tmp_path / "restored")) == []


def test_a_failed_child_leaves_the_second_half_to_this_process(repo, tmp_path, split, monkeypatch):
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root)
    first = back_up(repo, root, "full")

    def explode(self, start):
        raise RuntimeError("the child fails")

    monkeypatch.setattr(backup_module._TreeScan, "_compare_half", explode)
    again = back_up(repo, root)
    assert again.source("data").tree == first.source("data").tree
    assert again.totals.reused_files == first.totals.files

    monkeypatch.setattr(backup_module._TreeScan, "_compare_half", lambda self, start: os.kill(os.getpid(), 9))
    change_tree(root)
    killed = back_up(repo, root)
    monkeypatch.setattr(backup_module, "SPLIT_MIN_ENTRIES", 10**9)
    assert killed.source("data").tree == back_up(repo, root, "full").source("data").tree


def test_a_backup_that_fails_stops_its_child(repo, tmp_path, split, monkeypatch):
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root)
    back_up(repo, root, "full")
    (root / "d0" / "grown.bin").write_bytes(os.urandom(5 << 20))  # in the first half: over the limit there
    children = []
    real = forked.Forked

    class Watched(real):
        def __init__(self, work):
            super().__init__(work)
            children.append(self._pid)

    monkeypatch.setattr(forked, "Forked", Watched)
    options = BackupOptions(app_id="t", max_bytes=4 << 20)
    with pytest.raises(QuotaExceeded), BackupSession(repo, options) as session:
        session.add_tree("data", str(root))
    assert len(children) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(children[0], os.WNOHANG)  # reaped: no zombie left


@pytest.mark.parametrize("run_files", [1, 2, 5])
@pytest.mark.parametrize("two_cores", [False, True])
def test_runs_of_unchanged_files_of_any_length_list_what_a_full_backup_lists(
    repo, tmp_path, monkeypatch, run_files, two_cores
):
    """Unchanged files are taken from the walk in runs of up to RUN_FILES: wherever a run
    ends (a directory, a hard link, a changed file, a name JSON escapes, the run's limit),
    the listing is the one a full backup makes and every unchanged file is reused."""
    monkeypatch.setattr(backup_module, "RUN_FILES", run_files)
    if two_cores:
        monkeypatch.setattr(backup_module, "SPLIT_MIN_ENTRIES", 1)
        monkeypatch.setattr(forked, "available", lambda: True)
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root)
    first = back_up(repo, root, "full")
    unchanged = back_up(repo, root)
    assert unchanged.source("data").tree == first.source("data").tree
    assert unchanged.totals.reused_files == first.totals.files
    assert unchanged.totals.dirs == first.totals.dirs
    change_tree(root)
    changed = back_up(repo, root)
    # read: d0/f03.txt, d5/deep/f04.txt, d2/new.txt, the file that was a directory and the new
    # pair's first name d0/second-link (d5/deep/f06.txt, now its second name, is a link entry)
    assert changed.totals.reused_files == changed.totals.files - 5
    fresh = back_up(repo, root, "full")
    assert changed.source("data").tree == fresh.source("data").tree
    assert (changed.totals.files, changed.totals.dirs) == (fresh.totals.files, fresh.totals.dirs)
    restore_snapshot(repo, changed, str(tmp_path / "restored"))
    assert compare(str(root), str(tmp_path / "restored")) == []


@pytest.mark.parametrize("run_files", [1, 3, 2048])
@pytest.mark.parametrize("two_cores", [False, True])
def test_directories_of_every_kind_in_runs_list_what_a_full_backup_lists(
    repo, tmp_path, monkeypatch, run_files, two_cores
):
    """A directory's line is made from its stat inside a run of unchanged files: with xattrs,
    a name JSON escapes, a name that is not UTF-8, empty, nested, and a changed mode, owner
    or mtime, the listing is byte for byte the one a full backup makes."""
    monkeypatch.setattr(backup_module, "RUN_FILES", run_files)
    if two_cores:
        monkeypatch.setattr(backup_module, "SPLIT_MIN_ENTRIES", 1)
        monkeypatch.setattr(forked, "available", lambda: True)
    root = tmp_path / "t"
    names = ["plain", 'quo"te', "back\\slash", "ctl\x01", "emptyish", "x-last"]
    for name in names:
        for sub in ("", "/inner", "/inner/deeper"):
            d = root / (name + sub)
            d.mkdir(parents=True, exist_ok=True)
            for f in range(2):
                (d / f"f{f}").write_text(f"{name}{sub}{f}")
    bad = os.fsencode(root) + b"/\xff\xfenot-utf8"
    os.mkdir(bad)
    open(bad + b"/f", "w").close()
    (root / "empty").mkdir()
    os.setxattr(root / "plain" / "inner", "user.note", b"\x00\xffdir")
    os.setxattr(root / 'quo"te', "user.other", b"v")
    first = back_up(repo, root, "full")
    assert b'"xattrs"' in b"".join(
        tree.read_texts([bytes.fromhex(h) for h in first.source("data").tree], repo.load_blob)
    )
    unchanged = back_up(repo, root)
    assert unchanged.source("data").tree == first.source("data").tree
    assert (unchanged.totals.reused_files, unchanged.totals.dirs) == (first.totals.files, first.totals.dirs)
    os.chmod(root / "plain" / "inner" / "deeper", 0o700)
    os.utime(root / "x-last", ns=(1, 1_500_000_000_123_456_789))
    os.chown(root / "emptyish", 1234, 5678)
    os.setxattr(root / "plain", "user.added", b"later")
    changed = back_up(repo, root)
    assert changed.totals.reused_files == first.totals.files  # only directories changed
    fresh = back_up(repo, root, "full")
    assert changed.source("data").tree == fresh.source("data").tree
    assert changed.totals.dirs == fresh.totals.dirs
    restore_snapshot(repo, changed, str(tmp_path / "restored"))
    assert compare(str(root), str(tmp_path / "restored")) == []


def test_an_unchanged_plain_tree_takes_every_file_in_runs(repo, tmp_path, monkeypatch):
    """The files of an unchanged tree (plain names, one link each) are all taken by the run
    loop, directories between them included: none falls back to the slower one-file check."""
    root = tmp_path / "t"
    for d in range(4):
        for sub in ("", "a", "a/b", "c"):
            (root / f"d{d}" / sub).mkdir(parents=True, exist_ok=True)
            for f in range(3):
                (root / f"d{d}" / sub / f"f{f}").write_text(f"{d}/{sub}/{f}")
    first = back_up(repo, root, "full")
    slow = []
    one_file = backup_module._TreeScan._reusable
    monkeypatch.setattr(
        backup_module._TreeScan, "_reusable", lambda self, rel, st: slow.append(rel) or one_file(self, rel, st)
    )
    again = back_up(repo, root)
    assert again.totals.reused_files == first.totals.files == 48
    assert slow == []
    (root / "d1" / "a" / "f1").write_text("changed")
    back_up(repo, root)
    assert slow == [b"d1/a/f1"]
