"""verify_snapshot: what a restore checks before it touches anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.errors import BackupCorrupted
from sidecar.jobs.verify import verify_snapshot
from sidecar.repo import tree
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository

KEY = b"verify test key"


@pytest.fixture
def made(tmp_path: Path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / 'odd "name".bin').write_bytes(os.urandom(200_000))
    (src / "small.txt").write_text("small")
    (src / "empty").write_bytes(b"")
    os.symlink("small.txt", src / "link")
    repo = Repository.init(LocalBackend(tmp_path / "repo"), KEY)
    with BackupSession(repo, BackupOptions(app_id="a")) as session:
        session.add_tree("volume:data", str(src), kind="volume")
        snap = session.commit()
    return tmp_path / "repo", snap


def fresh(root: Path) -> Repository:
    return Repository.open(LocalBackend(root), KEY)


def data_pack(root: Path, snap) -> str:
    """The pack holding the big file's content (not the listing's)."""
    repo = fresh(root)
    ids = [bytes.fromhex(h) for h in snap.source("volume:data").tree]
    entry = next(e for e in tree.read_tree(ids, repo.load_blob) if e.get("path") == 'd/odd "name".bin')
    location = repo.index().get(bytes.fromhex(entry["blobs"][0]))
    assert location is not None
    listing = repo.index().get(ids[0])
    assert listing is not None and listing.pack_id != location.pack_id
    return location.pack_id


def test_a_sound_snapshot_passes_with_and_without_reading_data(made):
    root, snap = made
    verify_snapshot(fresh(root), snap)
    verify_snapshot(fresh(root), snap, read_data=True)


def test_blobs_missing_from_the_index_are_named_with_their_file(made):
    root, snap = made
    gone = data_pack(root, snap)
    repo = fresh(root)
    for index_id in repo.list_ids("index"):  # the index forgets the data pack; the listing stays indexed
        doc = repo.load_json("index", index_id)
        doc["packs"] = [p for p in doc["packs"] if p["id"] != gone]
        repo.save_json("index", doc)
        repo.backend.delete(f"index/{index_id}")
    with pytest.raises(BackupCorrupted, match=r'volume:data:d/odd "name".bin: blob [0-9a-f]{16} is not in the index'):
        verify_snapshot(fresh(root), snap)


def test_missing_and_truncated_packs_are_refused(made):
    root, snap = made
    pack = next((root / "data").rglob(data_pack(root, snap)))
    data = pack.read_bytes()
    pack.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackupCorrupted, match=f"pack {pack.name[:16]}"):
        verify_snapshot(fresh(root), snap)
    pack.unlink()
    with pytest.raises(BackupCorrupted, match=f"pack {pack.name[:16]} is missing"):
        verify_snapshot(fresh(root), snap)
