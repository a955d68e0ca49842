"""Content-defined chunking (sidecar/repo/chunker.py), with small sizes so the tests are fast."""

from __future__ import annotations

import io
import json
import random

import pytest

from sidecar.repo.chunker import Chunker, ChunkerParams

PARAMS = ChunkerParams(min_size=4 * 1024, avg_size=16 * 1024, max_size=64 * 1024)
SEED = 0x5EED_1234_ABCD
RANDOM_2M = random.Random(7).randbytes(2 * 1024 * 1024)
TEXT = b"".join(b"%08d some log line with a varying number %d\n" % (i, i * 7919 % 1000) for i in range(20_000))

DATA_SETS = {
    "random": RANDOM_2M[: 1024 * 1024],
    "zeros": bytes(300_000),
    "pattern": bytes(range(256)) * 1500,
    "text": TEXT,
}


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(PARAMS, SEED)


class ShortReads(io.RawIOBase):
    """A pipe-like stream: reads return at most `step` bytes."""

    def __init__(self, data: bytes, step: int = 777) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        piece = self._data.read(min(len(buf), self._step))
        buf[: len(piece)] = piece
        return len(piece)


def chunks_of(chunker: Chunker, data: bytes) -> list[bytes]:
    return [bytes(c) for c in chunker.split_buffer(data)]


def boundaries(chunks: list[bytes]) -> list[int]:
    out, offset = [], 0
    for c in chunks:
        offset += len(c)
        out.append(offset)
    return out


@pytest.mark.parametrize("name", sorted(DATA_SETS))
def test_chunk_sizes_respect_min_and_max(chunker, name):
    data = DATA_SETS[name]
    chunks = chunks_of(chunker, data)
    assert len(chunks) > 1
    for c in chunks[:-1]:
        assert PARAMS.min_size <= len(c) <= PARAMS.max_size
    assert 0 < len(chunks[-1]) <= PARAMS.max_size


def test_random_data_averages_near_the_target(chunker):
    chunks = chunks_of(chunker, RANDOM_2M)
    average = len(RANDOM_2M) / len(chunks)
    assert PARAMS.avg_size / 2 <= average <= PARAMS.avg_size * 2


def test_zeros_are_cut_at_max_size(chunker):
    chunks = chunks_of(chunker, bytes(300_000))
    assert [len(c) for c in chunks] == [PARAMS.max_size] * 4 + [300_000 - 4 * PARAMS.max_size]


@pytest.mark.parametrize("name", sorted(DATA_SETS))
def test_chunks_concatenate_to_the_input(chunker, name):
    data = DATA_SETS[name]
    assert b"".join(chunker.split_buffer(data)) == data
    assert b"".join(bytes(c) for c in chunker.split_stream(io.BytesIO(data))) == data


def test_split_buffer_gives_views_into_the_input(chunker):
    data = RANDOM_2M[:200_000]
    for view in chunker.split_buffer(data):
        assert isinstance(view, memoryview)
        assert view.obj is data


@pytest.mark.parametrize(
    "size",
    [
        1,
        PARAMS.min_size - 1,
        PARAMS.min_size,
        PARAMS.min_size + 1,
        PARAMS.avg_size,
        PARAMS.max_size,
        PARAMS.max_size + 1,
        3 * PARAMS.max_size + 17,
        len(RANDOM_2M),
    ],
)
@pytest.mark.parametrize(
    "make_stream",
    [
        pytest.param(io.BytesIO, id="file-like"),
        pytest.param(ShortReads, id="short-reads"),
        pytest.param(lambda d: io.BufferedReader(ShortReads(d, 5000)), id="buffered"),
    ],
)
def test_split_stream_matches_split_buffer(chunker, size, make_stream):
    data = RANDOM_2M[:size]
    from_buffer = chunks_of(chunker, data)
    from_stream = [bytes(c) for c in chunker.split_stream(make_stream(data))]
    assert boundaries(from_stream) == boundaries(from_buffer)
    assert from_stream == from_buffer


@pytest.mark.parametrize("name", sorted(DATA_SETS))
def test_split_stream_matches_split_buffer_for_all_kinds(chunker, name):
    data = DATA_SETS[name]
    assert [bytes(c) for c in chunker.split_stream(io.BytesIO(data))] == chunks_of(chunker, data)


@pytest.mark.parametrize("size", [1, 2, 100, PARAMS.min_size - 1, PARAMS.min_size])
def test_small_input_is_one_chunk(chunker, size):
    data = RANDOM_2M[:size]
    assert chunks_of(chunker, data) == [data]
    assert [bytes(c) for c in chunker.split_stream(io.BytesIO(data))] == [data]


def test_empty_input_gives_no_chunks(chunker):
    assert list(chunker.split_buffer(b"")) == []
    assert list(chunker.split_stream(io.BytesIO(b""))) == []


def test_same_seed_same_boundaries():
    a = boundaries(chunks_of(Chunker(PARAMS, SEED), RANDOM_2M))
    b = boundaries(chunks_of(Chunker(ChunkerParams(**vars(PARAMS)), SEED), RANDOM_2M))
    assert a == b


@pytest.mark.parametrize("other_seed", [1, 2, SEED + 1, 2**62 - 1])
def test_different_seeds_give_different_boundaries(other_seed):
    mine = set(boundaries(chunks_of(Chunker(PARAMS, SEED), RANDOM_2M)))
    theirs = set(boundaries(chunks_of(Chunker(PARAMS, other_seed), RANDOM_2M)))
    shared = (mine & theirs) - {len(RANDOM_2M)}
    assert len(shared) < len(mine) // 10


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: b"X" + d, id="one byte prepended"),
        pytest.param(lambda d: d[:10] + b"inserted!" * 11 + d[10:], id="99 bytes inserted near start"),
        pytest.param(lambda d: d[:1000] + d[1100:], id="100 bytes deleted near start"),
        pytest.param(lambda d: d[:5] + b"Z" + d[6:], id="one byte changed near start"),
    ],
)
def test_edit_near_the_start_changes_only_the_first_chunks(chunker, edit):
    original = chunks_of(chunker, RANDOM_2M)
    edited = chunks_of(chunker, edit(RANDOM_2M))
    known = set(original)
    changed = [i for i, c in enumerate(edited) if c not in known]
    assert changed, "the edit must show up somewhere"
    assert changed == list(range(len(changed))) and len(changed) <= 2
    # everything after the first changed chunks is the same sequence of chunks
    assert edited[len(changed) :] == original[-(len(edited) - len(changed)) :]
    assert len(set(edited) & known) >= len(original) - 2


@pytest.mark.parametrize("position", [300_000, 1024 * 1024, 1_900_000])
def test_edit_in_the_middle_changes_only_nearby_chunks(chunker, position):
    original = chunks_of(chunker, RANDOM_2M)
    edited_data = RANDOM_2M[:position] + b"new content " * 20 + RANDOM_2M[position:]
    edited = chunks_of(chunker, edited_data)
    known = set(original)
    changed = [i for i, c in enumerate(edited) if c not in known]
    assert 1 <= len(changed) <= 2
    assert changed == list(range(changed[0], changed[0] + len(changed)))
    # the changed chunks cover the edit
    ends = boundaries(edited)
    start = ends[changed[0] - 1] if changed[0] else 0
    assert start <= position < ends[changed[-1]]
    assert len(set(edited) & known) >= len(original) - 2


# ---- parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        ChunkerParams(),
        PARAMS,
        ChunkerParams(min_size=1024, avg_size=2048, max_size=8192, normalization=2),
        ChunkerParams(min_size=64 * 1024, avg_size=256 * 1024, max_size=1024 * 1024, normalization=0),
    ],
)
def test_params_json_round_trip(params):
    doc = json.loads(json.dumps(params.to_json()))
    assert doc["algorithm"] == "fastcdc-2020"
    assert ChunkerParams.from_json(doc) == params


def test_default_params_are_pinned():
    assert ChunkerParams().to_json() == {
        "algorithm": "fastcdc-2020",
        "min_size": 512 * 1024,
        "avg_size": 1024 * 1024,
        "max_size": 4 * 1024 * 1024,
        "normalization": 1,
    }


@pytest.mark.parametrize("algorithm", ["rabin", "fastcdc-2016", "FASTCDC-2020", "", None, 2020])
def test_unknown_algorithm_is_rejected(algorithm):
    doc = PARAMS.to_json() | {"algorithm": algorithm}
    with pytest.raises(ValueError, match="unknown chunker algorithm"):
        ChunkerParams.from_json(doc)


def test_missing_algorithm_is_rejected():
    doc = PARAMS.to_json()
    del doc["algorithm"]
    with pytest.raises(ValueError, match="unknown chunker algorithm"):
        ChunkerParams.from_json(doc)
