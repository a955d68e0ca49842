"""limits.max_backup_size_gb: an oversized backup stops before it stores what is too much.

The engine counts each file's size when it is listed (before its data is read), a stream's
chunks before they are stored, and refuses with QuotaExceeded; nothing is recorded and no
pack reaches the repository."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from sidecar.errors import QuotaExceeded
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.backup import BackupOptions, BackupSession
from sidecar.repo.repository import Repository

MIB = 1 << 20


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"size limit test")


def stored(tmp_path: Path) -> list[str]:
    return [n for _, _, names in os.walk(tmp_path / "repo" / "data") for n in names]


def random_files(root: Path, sizes: list[int]) -> None:
    root.mkdir()
    rng = random.Random(3)
    for n, size in enumerate(sizes):
        (root / f"f{n}.bin").write_bytes(rng.randbytes(size))


def test_a_tree_over_the_limit_stores_no_pack(repo: Repository, tmp_path: Path) -> None:
    # 5 x 8 MiB of random data, limit 10 MiB: refused at the second file, before 16 MiB (a pack) was read
    random_files(tmp_path / "src", [8 * MIB] * 5)
    session = BackupSession(repo, BackupOptions(app_id="big", max_bytes=10 * MIB))
    with pytest.raises(QuotaExceeded, match="max_backup_size_gb"), session:
        session.add_tree("volume:data", str(tmp_path / "src"), kind="volume")
        session.commit()
    assert stored(tmp_path) == [], "data was stored before the limit stopped the backup"
    assert repo.list_snapshots() == []


def test_a_stream_over_the_limit_stops_before_the_chunk_that_crosses_it(repo: Repository, tmp_path: Path) -> None:
    data = random.Random(4).randbytes(40 * MIB)
    reader = io.BytesIO(data)
    session = BackupSession(repo, BackupOptions(app_id="dump", max_bytes=12 * MIB))
    with pytest.raises(QuotaExceeded), session:
        session.add_stream("database:db", reader, "dump.sql", kind="database")
        session.commit()
    assert reader.tell() < 20 * MIB, f"read {reader.tell() / MIB:.0f} MiB of a stream limited to 12"
    assert stored(tmp_path) == [] and repo.list_snapshots() == []


def test_under_the_limit_with_reused_files_counted(repo: Repository, tmp_path: Path) -> None:
    """Unchanged (reused) files count too: the second backup holds 12 MiB, over a 10 MiB limit,
    although it reads only 4 MiB of new data."""
    random_files(tmp_path / "src", [4 * MIB, 4 * MIB])
    with BackupSession(repo, BackupOptions(app_id="app", max_bytes=10 * MIB)) as session:
        session.add_tree("volume:data", str(tmp_path / "src"), kind="volume")
        first = session.commit()
    assert first.totals.bytes == 8 * MIB
    (tmp_path / "src" / "new.bin").write_bytes(random.Random(5).randbytes(4 * MIB))
    session = BackupSession(repo, BackupOptions(app_id="app", max_bytes=10 * MIB))
    with pytest.raises(QuotaExceeded, match="GB so far"), session:
        session.add_tree("volume:data", str(tmp_path / "src"), kind="volume")
        session.commit()
    assert [s.id for s in repo.list_snapshots()] == [first.id]
