"""The blob index (sidecar/repo/index.py): in-memory packing of locations and the JSON document form."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from sidecar.errors import IntegrityError
from sidecar.repo.index import BlobLocation, Index, index_document, iter_index_packs
from sidecar.repo.pack import DATA, TREE, PackEntry, PackInfo

M32 = 2**32 - 1


def blob(n: int) -> bytes:
    return hashlib.sha256(b"blob %d" % n).digest()


def pack(n: int) -> str:
    return hashlib.sha256(b"pack %d" % n).hexdigest()


def entry(n: int, type_: int = DATA, offset=0, length=100, inner=0, raw=50) -> PackEntry:
    return PackEntry(blob(n), type_, offset, length, inner, raw)


def location(pack_id: str, e: PackEntry) -> BlobLocation:
    return BlobLocation(pack_id, e.type, e.offset, e.length, e.inner, e.raw_length)


@pytest.mark.parametrize(
    "type_,offset,length,inner,raw",
    [
        (DATA, 0, 0, 0, 0),
        (TREE, 0, 0, 0, 0),
        (DATA, 1, 2, 3, 4),
        (TREE, 16 * 1024 * 1024, 512 * 1024, 300_000, 4 * 1024 * 1024),
        (DATA, M32, 0, 0, 0),
        (DATA, 0, M32, 0, 0),
        (DATA, 0, 0, M32, 0),
        (DATA, 0, 0, 0, M32),
        (TREE, M32, M32, M32, M32),
        (DATA, M32 - 1, M32 - 2, M32 - 3, M32 - 4),
        (TREE, 2**31, 2**31 + 1, 2**31 - 1, 2**16),
    ],
)
@pytest.mark.parametrize("pack_number", [0, 1, 1001, 5000])
def test_add_get_round_trip(type_, offset, length, inner, raw, pack_number):
    index = Index()
    for n in range(pack_number):  # make `pack_number` packs known before ours
        index.add(blob(10_000 + n), pack(n), entry(10_000 + n))
    e = PackEntry(blob(1), type_, offset, length, inner, raw)
    index.add(blob(1), pack(pack_number), e)
    assert index.get(blob(1)) == location(pack(pack_number), e)
    if pack_number:  # the neighbours are untouched
        assert index.get(blob(10_000)) == location(pack(0), entry(10_000))
        last = 10_000 + pack_number - 1
        assert index.get(blob(last)) == location(pack(pack_number - 1), entry(last))


def test_many_packs_and_blobs():
    index = Index()
    expected = {}
    for n in range(3000):
        e = PackEntry(blob(n), n % 2, (n * 7919) % 2**32, M32 - n, n * 3, M32 - 2 * n)
        pack_id = pack(n // 2)  # 1500 packs, two blobs each
        index.add(blob(n), pack_id, e)
        expected[blob(n)] = location(pack_id, e)
    assert len(index) == 3000
    assert len(index.pack_ids()) == 1500
    for blob_id, loc in expected.items():
        assert index.get(blob_id) == loc
    assert set(index.blob_ids()) == set(expected)


def test_unknown_blob():
    index = Index()
    index.add(blob(1), pack(1), entry(1))
    assert index.get(blob(2)) is None
    assert blob(2) not in index
    assert blob(1) in index
    assert len(index) == 1


def test_duplicates_keep_the_first_location():
    index = Index()
    first = entry(1, DATA, 10, 20, 30, 40)
    index.add(blob(1), pack(1), first)
    index.add(blob(1), pack(2), entry(1, TREE, 50, 60, 70, 80))
    index.add(blob(1), pack(1), entry(1, DATA, 0, 1, 0, 1))
    assert len(index) == 1
    assert index.get(blob(1)) == location(pack(1), first)


def test_add_pack():
    entries = tuple(entry(n, n % 2, offset=n * 100, length=100, inner=0, raw=90) for n in range(5))
    info = PackInfo(pack(7), Path("/nonexistent"), 600, entries)
    index = Index()
    index.add_pack(info)
    assert len(index) == 5
    assert index.pack_ids() == {pack(7)}
    for e in entries:
        assert index.get(e.blob_id) == location(pack(7), e)


def test_entries_by_pack():
    index = Index()
    layout = {pack(1): [0, 1, 2], pack(2): [3], pack(3): [4, 5]}
    for pack_id, numbers in layout.items():
        for n in numbers:
            index.add(blob(n), pack_id, entry(n, offset=n))
    index.add(blob(0), pack(3), entry(0))  # duplicate: stays in pack 1
    grouped = index.entries_by_pack()
    assert set(grouped) == set(layout)
    for pack_id, numbers in layout.items():
        assert [b for b, _ in grouped[pack_id]] == [blob(n) for n in numbers]
        for blob_id, loc in grouped[pack_id]:
            assert loc == index.get(blob_id)
            assert loc.pack_id == pack_id
    assert Index().entries_by_pack() == {}


def sample_packs() -> list[tuple[str, list[PackEntry]]]:
    return [
        (pack(1), [entry(1, DATA, 0, 1000, 0, 400), entry(2, TREE, 0, 1000, 400, 500)]),
        (pack(2), [entry(3, DATA, M32, M32, M32, M32)]),
        (pack(3), []),
    ]


def test_index_document_shape():
    doc = index_document(sample_packs(), supersedes=["b" * 64, "a" * 64])
    assert doc["supersedes"] == ["a" * 64, "b" * 64]
    assert doc["packs"][0] == {
        "id": pack(1),
        "blobs": [[blob(1).hex(), "data", 0, 1000, 0, 400], [blob(2).hex(), "tree", 0, 1000, 400, 500]],
    }
    assert index_document([])["supersedes"] == []


def test_index_document_round_trip():
    packs = sample_packs()
    doc = json.loads(json.dumps(index_document(packs, supersedes=["c" * 64])))
    assert list(iter_index_packs(doc)) == packs
    index = Index()
    index.load_document(doc)
    assert len(index) == 3
    for pack_id, entries in packs:
        for e in entries:
            assert index.get(e.blob_id) == location(pack_id, e)


def test_load_document_keeps_first_location_across_documents():
    index = Index()
    index.load_document(index_document([(pack(1), [entry(1, offset=5)])]))
    index.load_document(index_document([(pack(2), [entry(1, offset=9)])]))
    assert index.get(blob(1)) == location(pack(1), entry(1, offset=5))


def damaged(change):
    doc = index_document(sample_packs())
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def _set(path, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_set(["packs"], KeyError), id="no packs"),
        pytest.param(_set(["packs", 0, "id"], KeyError), id="pack without id"),
        pytest.param(_set(["packs", 0, "blobs"], KeyError), id="pack without blobs"),
        pytest.param(_set(["packs"], None), id="packs null"),
        pytest.param(_set(["packs", 0], "a pack"), id="pack is a string"),
        pytest.param(_set(["packs", 0, "id"], "ab" * 31), id="pack id too short"),
        pytest.param(_set(["packs", 0, "id"], "ab" * 33), id="pack id too long"),
        pytest.param(_set(["packs", 0, "id"], ""), id="pack id empty"),
        pytest.param(_set(["packs", 0, "id"], 12), id="pack id a number"),
        pytest.param(_set(["packs", 0, "blobs", 0, 0], "zz" * 32), id="blob id not hex"),
        pytest.param(_set(["packs", 0, "blobs", 0, 0], "abc"), id="blob id odd hex"),
        pytest.param(_set(["packs", 0, "blobs", 0, 0], None), id="blob id null"),
        pytest.param(_set(["packs", 0, "blobs", 0, 1], "snapshot"), id="unknown type"),
        pytest.param(_set(["packs", 0, "blobs", 0, 1], 0), id="type as number"),
        pytest.param(_set(["packs", 0, "blobs", 0, 1], "DATA"), id="type wrong case"),
        pytest.param(_set(["packs", 0, "blobs", 0], [blob(1).hex(), "data", 0, 1, 0]), id="five fields"),
        pytest.param(_set(["packs", 0, "blobs", 0], [blob(1).hex(), "data", 0, 1, 0, 1, 9]), id="seven fields"),
        pytest.param(_set(["packs", 0, "blobs"], None), id="blobs null"),
    ],
)
def test_damaged_document_is_integrity_error(change):
    doc = damaged(change)
    with pytest.raises(IntegrityError, match="damaged index document"):
        list(iter_index_packs(doc))
    with pytest.raises(IntegrityError):
        Index().load_document(doc)
    _records_refused(doc)


def _records_refused(doc: dict) -> None:
    index = Index()
    with pytest.raises(IntegrityError, match="damaged index document"):
        index.document_records(doc)
    assert index.pack_ids() == set()  # the refused document registered no pack
    index.load_records(index.document_records(damaged(lambda d: None)))
    assert len(index) == sum(len(entries) for _, entries in sample_packs())


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_set(["packs", 0, "blobs", 0, 0], "ab" * 31), id="blob id 31 bytes"),
        pytest.param(_set(["packs", 0, "id"], "zz" * 32), id="pack id not hex"),
        pytest.param(_set(["packs", 0, "blobs", 0, 2], "5"), id="offset a string"),
        pytest.param(_set(["packs", 0, "blobs", 0, 2], -1), id="offset negative"),
        pytest.param(_set(["packs", 0, "blobs", 0, 2], 2**32), id="offset over 32 bits"),
        pytest.param(_set(["packs", 0, "blobs", 0, 5], 1.5), id="raw length a float"),
    ],
)
def test_out_of_range_document_values_are_integrity_error(change):
    with pytest.raises(IntegrityError):
        Index().load_document(damaged(change))
    _records_refused(damaged(change))


# ---- the compact sorted buffers ------------------------------------------------------------------


def test_entries_survive_merges_and_lookups_see_every_state(monkeypatch):
    import random

    import sidecar.repo.index as index_module

    monkeypatch.setattr(index_module, "MERGE_AT", 7)
    rng = random.Random(5)
    index = Index()
    expected: dict[bytes, tuple] = {}
    shared = rng.randbytes(8)  # ids that agree on the 8 bytes the binary search uses
    for n in range(1500):
        blob_id = (shared if n % 10 == 0 else rng.randbytes(8)) + rng.randbytes(24)
        entry = PackEntry(blob_id, n % 2, n * 7, n + 1, n * 3, n * 5)
        pack = f"{n % 13:064x}"
        index.add(blob_id, pack, entry)
        expected[blob_id] = (pack, entry)
        if n % 97 == 0:  # every id added so far is found, whatever was merged
            assert all(i in index for i in expected)
    index.add(next(iter(expected)), "f" * 64, PackEntry(b"", 0, 1, 1, 0, 1))  # a duplicate: the first copy stays
    index.merge()
    assert len(index) == len(expected)
    assert set(index.blob_ids()) == set(expected)
    for blob_id, (pack, e) in expected.items():
        assert index.get(blob_id) == BlobLocation(pack, e.type, e.offset, e.length, e.inner, e.raw_length)
    assert index.get(shared + bytes(24)) is None
    assert bytes(32) not in index


def test_an_index_of_many_blobs_is_small():
    import os
    import tracemalloc

    tracemalloc.start()
    index = Index()
    for n in range(60_000):
        index.add(os.urandom(32), f"{n // 1000:064x}", PackEntry(b"", 0, n, 100, 0, 100))
    index.merge()
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(index) == 60_000
    assert size < 60_000 * 80, f"{size / 60_000:.0f} bytes a blob"


def test_load_sorted_keeps_the_first_copy_and_finds_everything():
    import random

    rng = random.Random(9)
    ids = [rng.randbytes(32) for _ in range(3000)]
    first = [(f"{p:064x}", [PackEntry(ids[p * 100 + i], p % 2, i, 10, 0, 10) for i in range(100)]) for p in range(30)]
    again = [("e" * 64, [PackEntry(ids[i], 1, 999, 9, 9, 9) for i in range(0, 3000, 7)])]  # duplicates, loaded later
    index = Index()
    index.load_sorted(iter(first + again))
    assert len(index) == 3000
    for p, (pack, entries) in enumerate(first):
        for i, e in enumerate(entries):
            assert index.get(e.blob_id) == BlobLocation(pack, p % 2, i, 10, 0, 10)
    with pytest.raises(ValueError):
        index.load_sorted(iter(first))


def test_document_records_load_like_documents():
    import random

    rng = random.Random(3)
    docs = [
        index_document(
            [(f"{d:02x}{p:062x}", [PackEntry(rng.randbytes(32), p % 2, i, 10 + i, i, 20 + i) for i in range(50)])
             for p in range(5)]
        )
        for d in range(3)
    ]  # fmt: skip
    docs.append(
        index_document([("f" * 64, [PackEntry(bytes.fromhex(docs[0]["packs"][0]["blobs"][0][0]), 0, 1, 1, 1, 1)])])
    )
    slow, fast = Index(), Index()
    for doc in docs:
        slow.load_document(doc)
    slow.merge()
    fast.load_records([r for doc in docs for r in fast.document_records(doc)])
    assert len(fast) == len(slow) == 750
    for blob_id in slow.blob_ids():
        assert fast.get(blob_id) == slow.get(blob_id)  # the first copy of the duplicate serves in both
    assert fast.pack_ids() == {p["id"] for doc in docs for p in doc["packs"]}  # incl. the one of only a duplicate


def test_ids_at_the_edges_of_the_16_bit_buckets_are_found():
    import random

    rng = random.Random(11)
    edges = [bytes([a, b]) + rng.randbytes(30) for a, b in ((0, 0), (0, 0), (0, 1), (0x7F, 0xFF), (0xFF, 0xFF))]
    edges.append(b"\xff" * 32)
    edges.append(bytes(32))
    others = [rng.randbytes(32) for _ in range(500)]
    loaded, merged = Index(), Index()
    loaded.load_sorted([("a" * 64, [PackEntry(i, 0, n, 1, 0, 1) for n, i in enumerate(edges + others)])])
    for n, i in enumerate(edges + others):
        merged.add(i, "b" * 64, PackEntry(i, 0, n, 1, 0, 1))
    merged.merge()
    for index in (loaded, merged):
        assert all(i in index for i in edges + others)
        for i in edges:
            for neighbour in (i[:31] + bytes([i[31] ^ 1]), i[:2] + bytes(30), i[:2] + b"\xff" * 30):
                assert (neighbour in index) == (neighbour in edges)


def test_has_all_answers_like_contains():
    import random

    rng = random.Random(12)
    ids = [rng.randbytes(32) for _ in range(2000)]
    index = Index()
    for n, i in enumerate(ids[:1500]):
        index.add(i, "c" * 64, PackEntry(i, 0, n, 1, 0, 1))
        if n == 1000:
            index.merge()  # some sorted, some recent
    shared = ids[0][:8] + rng.randbytes(24)  # shares the 8 bytes the search compares
    assert index.has_all(ids[:1500]) and index.has_all([]) and index.has_all(ids[1400:1450])
    for absent in (ids[1700], shared, bytes(32)):
        assert not index.has_all([ids[3], absent, ids[1200]])
        assert (absent in index) is False


def test_add_pack_numbers_groups_blobs_by_pack_and_names_the_missing():
    import random

    rng = random.Random(13)
    index = Index()
    placed: dict[str, set[bytes]] = {}
    for n in range(900):
        blob_id = rng.randbytes(32)
        pack = f"{n % 7:064x}"
        index.add(blob_id, pack, PackEntry(blob_id, 0, n, 1, 0, 1))
        placed.setdefault(pack, set()).add(blob_id)
        if n == 600:
            index.merge()  # some sorted, some recent
    absent = [rng.randbytes(32) for _ in range(3)]
    wanted = [b for ids in placed.values() for b in ids]
    by_number: dict[int, set[bytes]] = {}
    missing = index.add_pack_numbers(wanted[:450] + absent[:1], by_number)
    missing += index.add_pack_numbers(wanted[450:] + absent[1:], by_number)
    assert missing == absent
    assert {index.pack_id(n): ids for n, ids in by_number.items()} == placed
