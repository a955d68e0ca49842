"""Unchanged files of an incremental backup: their parent listing lines are reused
verbatim, which must give exactly the listing a fresh read gives, and must never
reuse a file whose data is no longer in the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.treecompare import compare
from sidecar.repo import tree
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.fsmeta import entry_from_stat, file_line_head
from sidecar.repo.repository import Repository
from sidecar.repo.restore import restore_snapshot

# names JSON must escape (so the line's path cannot be read off it) and names it holds as is
NAMES = [
    b'quote"in name',
    b"back\\slash",
    b"new\nline",
    b"tab\there",
    b"latin1-\xe9t\xe9",
    "naïve café ✓".encode(),
    b"plain.txt",
    b"z" * 200,
]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"k")


def make_tree(root: Path) -> None:
    base = os.fsencode(root)
    for n, name in enumerate(NAMES):
        sub = os.path.join(base, b"d%d" % (n % 3))
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, name), "wb") as f:
            f.write(b"content of %d\n" % n)
    (root / "big.bin").write_bytes(os.urandom(6 << 20))  # several blobs
    (root / "empty").write_bytes(b"")  # none
    (root / "x.txt").write_text("with an xattr")
    os.setxattr(root / "x.txt", "user.note", b"\x00\xff")
    os.link(root / "x.txt", root / "y-hardlink")
    os.symlink("x.txt", root / "link")


def back_up(repo: Repository, root: Path, backup_type: str = "incremental"):
    with BackupSession(repo, BackupOptions(app_id="a", backup_type=backup_type)) as session:
        session.add_tree("data", str(root))
        return session.commit()


def test_file_line_head_is_the_encoded_entry_up_to_its_last_stat_field(tmp_path):
    for name in (b"plain.txt", "naïve café ✓".encode(), b"a b.c", b"z" * 200):
        path = tmp_path / os.fsdecode(name)
        path.write_bytes(b"x" * 12345)
        os.chmod(path, 0o4751)
        st = os.lstat(path)
        rel = b"some/dir/" + name
        assert tree.encode_entry(entry_from_stat(rel, st)).endswith(b"}\n")
        assert file_line_head(rel, st) == tree.encode_entry(entry_from_stat(rel, st))[:-2]


def test_unchanged_incremental_lists_byte_for_byte_what_a_full_read_lists(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    first = back_up(repo, src, "full")
    again = back_up(repo, src)
    full = back_up(repo, src, "full")
    assert again.backup_type == "incremental"
    files = len(NAMES) + 3  # + big.bin, empty, x.txt (its hard link is a link entry)
    assert again.totals.reused_files == files and full.totals.reused_files == 0
    assert again.totals.files == full.totals.files == files
    assert again.totals.bytes == full.totals.bytes
    assert again.source("data").tree == full.source("data").tree == first.source("data").tree


def test_changed_files_are_read_again_whatever_their_name(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    back_up(repo, src, "full")
    base = os.fsencode(src)
    changed = 0
    for n, name in enumerate(NAMES):
        if n % 2 == 0:
            with open(os.path.join(base, b"d%d" % (n % 3), name), "ab") as f:
                f.write(b"changed\n")
            changed += 1
    os.chmod(src / "big.bin", 0o600)  # metadata only
    second = back_up(repo, src)
    assert second.totals.reused_files == len(NAMES) + 3 - changed - 1
    target = tmp_path / "restored"
    restore_snapshot(repo, second, str(target))
    assert compare(str(src), str(target)) == []


def test_a_file_whose_data_left_the_repository_is_read_again(repo, tmp_path):
    """The parent lists the file, its stat is unchanged, but its pack is gone (and with
    it the index): the file's data is read again instead of being referenced."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.txt").write_text("kept")
    (src / "lost.bin").write_bytes(os.urandom(300_000))
    first = back_up(repo, src, "full")
    lost = repo.index().get(bytes.fromhex(_blobs_of(repo, first, b"lost.bin")[0]))
    assert lost is not None
    root = tmp_path / "repo"
    for doc in (root / "index").iterdir():
        doc.unlink()
    for pack in (root / "data").rglob(lost.pack_id):
        pack.unlink()
    fresh = Repository.open(LocalBackend(root), b"k")
    second = back_up(fresh, src)
    assert second.backup_type == "incremental" and second.parent == first.id
    assert second.totals.reused_files < 2  # lost.bin was read, not reused
    target = tmp_path / "restored"
    restore_snapshot(Repository.open(LocalBackend(root), b"k"), second, str(target))
    assert compare(str(src), str(target)) == []


def _blobs_of(repo: Repository, snap, path: bytes) -> list[str]:
    ids = [bytes.fromhex(h) for h in snap.source("data").tree]
    return next(e["blobs"] for e in tree.read_tree(ids, repo.load_blob) if tree.entry_path(e) == path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"path":"a","type":"file","size":0,"blobs":[]}', []),
        (b'{"path":"a","type":"file","blobs":["' + b"ab" * 32 + b'"]}', [bytes.fromhex("ab" * 32)]),
        (
            b'{"path":"a","type":"file","xattrs":[["eA==","eQ=="]],"blobs":["'
            + (b"01" * 32 + b'","' + b"02" * 32)
            + b'"]}',
            [bytes.fromhex("01" * 32), bytes.fromhex("02" * 32)],
        ),
        (b'{"path":"a","type":"dir"}', None),
        (b'{"path":"a","blobs":["' + b"zz" * 32 + b'"]}', None),
        (b'{"path":"a","blobs":["' + b"ab" * 31 + b'"]}', None),
        (b'{"path":"a","blobs":["' + b"ab" * 32 + b'","' + b"cd" * 31 + b'"]}', None),
    ],
)
def test_line_blob_ids(line, expected):
    assert tree.line_blob_ids(line) == expected
    if expected is not None:
        assert tree.line_blob_ids(line) == [bytes.fromhex(h) for h in tree.parse_line(line)["blobs"]]


@pytest.mark.parametrize(
    ("entry", "readable"),
    [
        ({"path": "a/b c/ü.txt", "type": "file"}, True),
        ({"path": 'q"uote', "type": "file"}, False),
        ({"path": "back\\slash", "type": "file"}, False),
        ({"path": "new\nline", "type": "file"}, False),
        ({"path_b64": "6Q==", "type": "file"}, False),
    ],
)
def test_line_path_reads_only_paths_json_holds_as_is(entry, readable):
    line = tree.encode_entry(entry)[:-1]
    path = tree.line_path(line)
    if readable:
        assert path == tree.entry_path(entry)
    else:
        assert path is None


def test_order_key_sorts_like_the_tree_order():
    import random

    from sidecar.repo.backup import order_key

    rng = random.Random(4)
    alphabet = [b"a", b"b", b"-", b".", b"0", b"\xff", b"\x01", b" ", b"~"]
    paths = {b"."}
    for _ in range(3000):
        depth = rng.randint(1, 4)
        paths.add(b"/".join(b"".join(rng.choices(alphabet, k=rng.randint(1, 3))) for _ in range(depth)))
    paths.update([b"a", b"a/b", b"a-c", b"a.b", b"a/b/c", b"a\x01"])
    by_tree = sorted(paths, key=tree.path_key)
    assert sorted(paths, key=order_key) == by_tree


@pytest.mark.parametrize(
    ("walked", "listed"),
    [
        (b'a\\"', b'a"'),  # `a\"` walked where the parent listed `a"`: the same raw text in a line
        (b"b\\\\", b"b\\"),  # `b\\` walked, the parent listed `b\`
    ],
)
def test_the_line_at_the_cursor_is_never_taken_for_a_path_json_would_escape(repo, tmp_path, walked, listed):
    """The fast match compares the raw path with the parent's line; a path holding a quote or
    a backslash must not match the line of another file whose escaped path reads the same."""
    from sidecar.repo.backup import _ParentCursor, _TreeScan
    from sidecar.repo.snapshot import SourceStats

    (tmp_path / "f").write_bytes(b"x")
    st = os.lstat(tmp_path / "f")
    entry = entry_from_stat(listed, st)
    entry["blobs"] = []
    line = tree.encode_entry(entry).rstrip(b"\n")
    assert line.startswith(file_line_head(walked, st))  # the trap: the raw head matches that line
    with BackupSession(repo, BackupOptions(app_id="t")) as session:
        scan = _TreeScan(session, "data", os.fsencode(tmp_path), SourceStats(), ())
        scan.parent = _ParentCursor([line])
        assert scan._reusable(walked, st) is None
        scan.parent = _ParentCursor([line])
        assert scan._reusable(listed, st) == line  # the file the line is for
        session.abort()
