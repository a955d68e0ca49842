"""`repair index`: a lost or damaged index is rebuilt from the packs' own headers.

Each test makes two backups of different data (so they have separate index
files), damages the repository through its back end (a local directory or
the moto S3 server), and checks what `check`, `repair index` and `restore`
say and do afterwards.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.repo.pack import pack_object_name
from tests.conftest import PASSWORD, CliResult, backend_of, copy_tree, run_cli

pytestmark = pytest.mark.backends("local", "s3")


@dataclass
class TwoBackups:
    repo: Path | str
    first: str  # snapshot ids
    second: str
    first_data: Path
    second_data: Path
    first_index: str  # the index file each backup wrote
    second_index: str


def names(repo: Path | str, kind: str) -> set[str]:
    return {name.rsplit("/", 1)[1] for name, _ in backend_of(repo).list(f"{kind}/")}


def ok(result: CliResult) -> CliResult:
    assert "Traceback" not in result.err and PASSWORD not in result.out + result.err, result.err
    assert result.code == 0, f"exit {result.code}\n{result.out}\n{result.err}"
    return result


def backup(repo: Path | str, data: Path, app: str) -> str:
    return ok(run_cli("backup", "--repo", repo, "--path", data, "--app-id", app, "--json")).json()["snapshot_id"]


@pytest.fixture
def two(repo: Path | str, dataset_template: Path, tmp_path: Path) -> TwoBackups:
    first_data = copy_tree(dataset_template, tmp_path / "first")
    second_data = tmp_path / "second"
    (second_data / "sub").mkdir(parents=True)
    rng = random.Random(5)
    for name, size in (("a.bin", 900_000), ("sub/b.bin", 30_000), ("c.txt", 12)):
        (second_data / name).write_bytes(rng.randbytes(size))
    first = backup(repo, first_data, "first")
    (first_index,) = names(repo, "index")
    second = backup(repo, second_data, "second")
    (second_index,) = names(repo, "index") - {first_index}
    return TwoBackups(repo, first, second, first_data, second_data, first_index, second_index)


def repair(repo: Path | str, *args: str) -> CliResult:
    return run_cli("repair", "index", "--repo", repo, "--json", *args)


def assert_restores(two: TwoBackups, tmp_path: Path, same_tree, label: str) -> None:
    for sid, data in ((two.first, two.first_data), (two.second, two.second_data)):
        target = tmp_path / f"{label}-{sid[:8]}"
        ok(run_cli("restore", sid, "--repo", two.repo, "--target", target))
        same_tree(data, target)


def check_clean(repo: Path | str) -> dict:
    report = ok(run_cli("check", "--repo", repo, "--read-data", "--json")).json()
    assert report["ok"] and not report["errors"] and not report["affected"], report
    return report


def test_lost_index_is_rebuilt_from_pack_headers(two: TwoBackups, tmp_path: Path, same_tree) -> None:
    backend = backend_of(two.repo)
    packs_before = names(two.repo, "data")
    backend.delete(f"index/{two.first_index}")
    broken = run_cli("check", "--repo", two.repo, "--json")
    assert broken.code == 1 and two.first in {a["snapshot"] for a in broken.json()["affected"]}

    dry = ok(repair(two.repo, "--dry-run")).json()
    assert dry["dry_run"] and dry["changed"] and dry["packs_added"] > 0 and dry["new_index"] is None
    assert names(two.repo, "index") == {two.second_index}, "a dry run wrote or deleted an index"

    report = ok(repair(two.repo)).json()
    assert report["packs_added"] == dry["packs_added"] == report["packs_read"]
    assert report["damaged_packs"] == [] and report["missing_packs"] == []
    assert names(two.repo, "index") == {report["new_index"]}, "the old index files were not replaced"
    assert names(two.repo, "data") == packs_before, "repair changed the packs"
    checked = check_clean(two.repo)
    assert checked["packs"] == len(packs_before) and checked["blobs"] == report["blobs"]
    assert_restores(two, tmp_path, same_tree, "repaired")

    # nothing left to repair: no new index is written
    again = ok(repair(two.repo)).json()
    assert not again["changed"] and again["new_index"] is None and again["packs_read"] == 0
    assert names(two.repo, "index") == {report["new_index"]}


def test_damaged_index_file_is_replaced(two: TwoBackups, tmp_path: Path, same_tree) -> None:
    backend = backend_of(two.repo)
    name = f"index/{two.second_index}"
    raw = bytearray(backend.get(name))
    raw[len(raw) // 2] ^= 0x01
    backend.delete(name)
    backend.put(name, bytes(raw))
    assert run_cli("check", "--repo", two.repo).code == 1

    result = ok(run_cli("repair", "index", "--repo", two.repo))
    assert f"damaged index file {two.second_index}" in result.out
    check_clean(two.repo)
    assert_restores(two, tmp_path, same_tree, "repaired")


def test_every_index_lost_and_a_pack_damaged(two: TwoBackups, tmp_path: Path, same_tree) -> None:
    """All index files gone and one pack of the first backup truncated: repair indexes every
    readable pack, names the damaged one and fails; the second backup restores, `check` names
    the first backup's damaged files."""
    backend = backend_of(two.repo)
    for index_id in names(two.repo, "index"):
        backend.delete(f"index/{index_id}")
    sizes = {n.rsplit("/", 1)[1]: s for n, s in backend.list("data/")}
    victim = max(sizes, key=lambda p: sizes[p])  # the backups wrote separate packs: one is hit
    data = backend.get(pack_object_name(victim))
    backend.delete(pack_object_name(victim))
    backend.put(pack_object_name(victim), data[: len(data) // 2])

    result = repair(two.repo)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert "BACKUP_CORRUPTED" in result.err
    report = result.json()
    assert [p.split(":")[0] for p in report["damaged_packs"]] == [victim]
    assert report["packs_read"] == len(sizes) - 1 and report["new_index"]

    doc = run_cli("check", "--repo", two.repo, "--json")
    assert doc.code == 1
    affected = {a["snapshot"] for a in doc.json()["affected"]}
    assert len(affected) == 1 and affected <= {two.first, two.second}, affected
    for sid, data_dir in ((two.first, two.first_data), (two.second, two.second_data)):
        target = tmp_path / sid[:8]
        restored = run_cli("restore", sid, "--repo", two.repo, "--target", target)
        if sid in affected:
            assert restored.code == 1 and "BACKUP_CORRUPTED" in restored.err, restored.err
        else:
            ok(restored)
            same_tree(data_dir, target)


def test_read_all_packs_rebuilds_a_healthy_index(two: TwoBackups, tmp_path: Path, same_tree) -> None:
    before = names(two.repo, "index")
    report = ok(repair(two.repo, "--read-all-packs")).json()
    assert report["packs_read"] == len(names(two.repo, "data")) and report["packs_added"] == 0
    assert not report["changed"] and report["new_index"]
    assert names(two.repo, "index") == {report["new_index"]} and not before & {report["new_index"]}
    check_clean(two.repo)
    assert_restores(two, tmp_path, same_tree, "rebuilt")


def test_repair_waits_for_no_backup(two: TwoBackups) -> None:
    """An exclusive lock: refused at once while another process holds a lock."""
    from sidecar.repo.locks import SHARED
    from sidecar.repo.repository import Repository

    repo = Repository.open(backend_of(two.repo), PASSWORD.encode())
    with repo.lock(SHARED, "backup"):
        result = repair(two.repo)
    assert result.code == 1 and "locked" in result.err.lower(), result.err
    assert names(two.repo, "index") == {two.first_index, two.second_index}
