"""A database dump carried over from the parent snapshot (a safety snapshot of a database
that shows no write since that dump): same listing, nothing stored, refused when incomplete."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from sidecar.errors import BackupCreateFailed
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository
from sidecar.repo.restore import restore_snapshot
from sidecar.repo.snapshot import SourceRecord

DUMP = os.urandom(5 << 20)  # several chunks


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"k")


def _first(repo: Repository) -> tuple[str, SourceRecord]:
    with BackupSession(repo, BackupOptions(app_id="app")) as session:
        record = session.add_stream("database:db", io.BytesIO(DUMP), "mariadb.sql", kind="database", engine="mariadb")
        record.fingerprint = "f" * 64
        snap = session.commit()
    return snap.id, repo.load_snapshot(snap.id).source("database:db")


def test_a_reused_dump_is_the_parents_listing_and_stores_nothing(repo, tmp_path):
    first_id, stored = _first(repo)
    assert stored.fingerprint == "f" * 64 and stored.reused_from is None  # read back from the repository
    packs = sorted(repo.backend.list("data"))
    with BackupSession(repo, BackupOptions(app_id="app")) as session:
        assert session.parent is not None and session.parent.id == first_id
        record = session.reuse_source(stored, first_id)
        snap = session.commit()
    again = repo.load_snapshot(snap.id).source("database:db")
    assert again.reused_from == first_id
    assert again.fingerprint == stored.fingerprint and again.engine == "mariadb" and again.kind == "database"
    assert again.tree == stored.tree
    assert record.stats.bytes == len(DUMP) and record.stats.added_bytes == 0 and record.stats.new_blobs == 0
    assert sorted(repo.backend.list("data")) == packs  # no pack written
    restore_snapshot(repo, repo.load_snapshot(snap.id), tmp_path / "out")
    assert (tmp_path / "out" / "mariadb.sql").read_bytes() == DUMP  # one source: straight into the target


def test_a_dump_whose_data_is_gone_is_not_reused(repo):
    first_id, stored = _first(repo)
    with BackupSession(repo, BackupOptions(app_id="app")) as session:
        broken = SourceRecord(stored.name, stored.kind, ["ab" * 32], stored.stats, stored.engine)
        with pytest.raises(BackupCreateFailed, match="no longer complete"):
            session.reuse_source(broken, first_id)
        assert session.sources == []
        with pytest.raises(BackupCreateFailed, match="no longer complete"):
            # the listing is there, one of the dump's chunks is not
            session.reuse_source(_with_missing_chunk(repo, session, stored), first_id)
        session.abort()


def _with_missing_chunk(repo: Repository, session: BackupSession, stored: SourceRecord) -> SourceRecord:
    from sidecar.repo import tree
    from sidecar.repo.pack import TREE

    (line,) = tree.read_lines([bytes.fromhex(h) for h in stored.tree], repo.load_blob)
    entry = tree.parse_line(line)
    entry["blobs"] = [*entry["blobs"][:-1], "cd" * 32]
    session._new_stats()
    key = len(session._stats) - 1
    listing = tree.TreeWriter(repo.chunker, lambda data: session.writer.store(TREE, data, key))
    listing.add(entry)
    ids = listing.finish()
    session.writer.finish()  # the new listing is indexed; its data blob is not
    return SourceRecord(stored.name, stored.kind, [i.hex() for i in ids], stored.stats, stored.engine)
