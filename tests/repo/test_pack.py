"""Packs (sidecar/repo/pack.py): sealed groups, then a sealed header, then uint32_le(header length)."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import pytest

from sidecar.errors import IntegrityError
from sidecar.repo.backends.local import LocalBackend
from sidecar.repo.codec import ZSTD, Codec
from sidecar.repo.crypto import MasterKey
from sidecar.repo.pack import (
    DATA,
    TREE,
    TYPE_CODES,
    TYPE_NAMES,
    PackEntry,
    PackWriter,
    group_spans,
    pack_object_name,
    parse_header,
    read_header,
)

RNG = random.Random(99)
ENTRY = struct.Struct("<BIIII32s")  # the documented header entry layout


@pytest.fixture
def codec() -> Codec:
    return Codec(MasterKey.generate())


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "repo")


# Groups as the store workers make them: one big blob alone, or several small ones together.
GROUPS: list[list[tuple[int, bytes]]] = [
    [(DATA, RNG.randbytes(300 * 1024))],  # a big random blob, alone, stored raw
    [  # small blobs of both types sharing a compressed group
        (DATA, b"first small blob " * 200),
        (TREE, b'{"type":"file","path":"a"}\n' * 50),
        (DATA, RNG.randbytes(1000)),
        (DATA, b""),
        (TREE, b'{"type":"dir","path":"."}\n'),
    ],
    [(TREE, b'{"type":"dir","path":"x"}\n' * 3000)],  # one tree blob alone
    [(DATA, RNG.randbytes(10)), (DATA, RNG.randbytes(20))],  # a small raw group
]


def add_groups(writer: PackWriter, codec: Codec, groups) -> dict[bytes, tuple[int, bytes]]:
    blobs = {}
    for group in groups:
        members, inner = [], 0
        for blob_type, data in group:
            blob_id = codec.key.blob_id(data + bytes([blob_type]))
            members.append((blob_id, blob_type, inner, len(data)))
            blobs[blob_id] = (blob_type, data)
            inner += len(data)
        writer.add_group(codec.encode(b"".join(d for _, d in group)), members)
    return blobs


def store_pack(backend: LocalBackend, codec: Codec, groups=GROUPS):
    writer = PackWriter(codec, backend.staging_dir)
    blobs = add_groups(writer, codec, groups)
    info = writer.finish()
    backend.put(pack_object_name(info.name), info.path)
    return info, blobs


def object_path(backend: LocalBackend, pack_id: str) -> Path:
    return backend.root / pack_object_name(pack_id)


def rewrite(path: Path, change) -> int:
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))
    return len(data)


def test_pack_object_name():
    pack_id = hashlib.sha256(b"x").hexdigest()
    assert pack_object_name(pack_id) == f"data/{pack_id[:2]}/{pack_id}"


def test_type_codes():
    assert (DATA, TREE) == (0, 1)
    assert TYPE_NAMES == {0: "data", 1: "tree"}
    assert {v: k for k, v in TYPE_NAMES.items()} == TYPE_CODES


def test_finish_names_the_file_by_its_sha256(tmp_path, codec):
    writer = PackWriter(codec, tmp_path / "staging")
    add_groups(writer, codec, GROUPS)
    info = writer.finish()
    content = info.path.read_bytes()
    assert info.path.parent == tmp_path / "staging"
    assert info.name == hashlib.sha256(content).hexdigest()
    assert info.size == len(content) == info.path.stat().st_size
    # layout: groups, sealed header, uint32 length of the sealed header
    (header_len,) = struct.unpack("<I", content[-4:])
    groups_end = max(e.offset + e.length for e in info.entries)
    assert groups_end + header_len + 4 == info.size
    assert writer.size == groups_end


def test_entries_describe_the_groups(tmp_path, codec):
    writer = PackWriter(codec, tmp_path)
    blobs = add_groups(writer, codec, GROUPS)
    info = writer.finish()
    assert [e.blob_id for e in info.entries] == list(blobs)
    assert [e.type for e in info.entries] == [t for group in GROUPS for t, _ in group]
    spans = group_spans(list(info.entries))
    assert len(spans) == len(GROUPS)
    offset = 0
    for ((g_offset, g_length), members), group in zip(spans.items(), GROUPS, strict=True):
        assert g_offset == offset  # groups are contiguous, in order
        offset += g_length
        assert [m.raw_length for m in members] == [len(d) for _, d in group]
        inner = 0
        for m in members:
            assert m.inner == inner
            inner += m.raw_length


def test_read_header_returns_the_written_entries(backend, codec):
    info, _ = store_pack(backend, codec)
    assert not info.path.exists()  # handed over to the back end
    assert backend.exists(pack_object_name(info.name))
    assert read_header(backend, info.name, info.size, codec) == list(info.entries)


def test_every_blob_decodes_from_its_group(backend, codec):
    info, blobs = store_pack(backend, codec)
    name = pack_object_name(info.name)
    entries = read_header(backend, info.name, info.size, codec)
    assert len(entries) == len(blobs)
    for e in entries:
        group = codec.decode(backend.get(name, e.offset, e.length))
        blob_type, data = blobs[e.blob_id]
        assert e.type == blob_type
        assert group[e.inner : e.inner + e.raw_length] == data


def test_groups_are_compressed_when_it_helps(backend, codec):
    info, _ = store_pack(backend, codec)
    spans = list(group_spans(list(info.entries)))
    flags = [codec.key.open_framed(backend.get(pack_object_name(info.name), o, n))[0] for o, n in spans]
    assert flags[1] == flags[2] == ZSTD
    assert flags[0] == flags[3] == 0


def test_empty_pack(backend, codec):
    info, _ = store_pack(backend, codec, groups=[])
    assert info.entries == ()
    assert read_header(backend, info.name, info.size, codec) == []


def test_header_bigger_than_the_tail_read(backend, codec):
    # ~3000 entries of 49 bytes with random ids: the sealed header exceeds the 64 KiB tail read
    groups = [[(DATA, RNG.randbytes(8)) for _ in range(100)] for _ in range(30)]
    info, blobs = store_pack(backend, codec, groups)
    content = object_path(backend, info.name).read_bytes()
    (header_len,) = struct.unpack("<I", content[-4:])
    assert header_len > 64 * 1024
    entries = read_header(backend, info.name, info.size, codec)
    assert entries == list(info.entries)
    assert {e.blob_id for e in entries} == set(blobs)


def test_header_plaintext_layout(backend, codec):
    info, _ = store_pack(backend, codec)
    content = object_path(backend, info.name).read_bytes()
    (header_len,) = struct.unpack("<I", content[-4:])
    raw = codec.decode(content[-4 - header_len : -4])
    assert len(raw) == ENTRY.size * len(info.entries) == 49 * len(info.entries)
    for fields, e in zip(ENTRY.iter_unpack(raw), info.entries, strict=True):
        assert fields == (e.type, e.offset, e.length, e.inner, e.raw_length, e.blob_id)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_damaged_header_is_integrity_error(backend, codec, where):
    info, _ = store_pack(backend, codec)
    path = object_path(backend, info.name)
    header_len = struct.unpack("<I", path.read_bytes()[-4:])[0]
    start = info.size - 4 - header_len
    index = {"first": start, "middle": start + header_len // 2, "last": info.size - 5}[where]

    def flip(data: bytearray) -> None:
        data[index] ^= 0x01

    rewrite(path, flip)
    with pytest.raises(IntegrityError):
        read_header(backend, info.name, info.size, codec)


def test_damaged_group_leaves_the_header_readable_but_not_the_blob(backend, codec):
    info, _ = store_pack(backend, codec)
    path = object_path(backend, info.name)
    first = info.entries[0]

    def flip(data: bytearray) -> None:
        data[first.offset + first.length // 2] ^= 0x40

    rewrite(path, flip)
    assert hashlib.sha256(path.read_bytes()).hexdigest() != info.name  # visible without the key
    assert read_header(backend, info.name, info.size, codec) == list(info.entries)
    with pytest.raises(IntegrityError):
        codec.decode(backend.get(pack_object_name(info.name), first.offset, first.length))


@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(lambda size, hlen: size - 3, id="header longer than the file"),
        pytest.param(lambda size, hlen: 0xFFFFFFFF, id="4 GiB"),
        pytest.param(lambda size, hlen: size, id="exactly the file"),
        pytest.param(lambda size, hlen: 0, id="zero"),
        pytest.param(lambda size, hlen: 5, id="shorter than a seal"),
        pytest.param(lambda size, hlen: hlen - 1, id="one byte short"),
        pytest.param(lambda size, hlen: hlen + 1, id="one byte long"),
    ],
)
def test_impossible_header_length_is_integrity_error(backend, codec, trailer):
    info, _ = store_pack(backend, codec)
    path = object_path(backend, info.name)
    header_len = struct.unpack("<I", path.read_bytes()[-4:])[0]

    def set_trailer(data: bytearray) -> None:
        data[-4:] = struct.pack("<I", trailer(info.size, header_len))

    rewrite(path, set_trailer)
    with pytest.raises(IntegrityError):
        read_header(backend, info.name, info.size, codec)


@pytest.mark.parametrize("content", [b"", b"\x01", b"abc"])
def test_pack_shorter_than_the_trailer(backend, codec, content):
    pack_id = hashlib.sha256(content).hexdigest()
    backend.put(pack_object_name(pack_id), content)
    with pytest.raises(IntegrityError, match="too short"):
        read_header(backend, pack_id, len(content), codec)


def test_header_that_does_not_cover_the_groups(backend, codec):
    writer = PackWriter(codec, backend.staging_dir)
    add_groups(writer, codec, GROUPS[:1])
    writer.add_group(codec.encode(b"a group no entry names"), [])
    info = writer.finish()
    backend.put(pack_object_name(info.name), info.path)
    with pytest.raises(IntegrityError, match="header describes"):
        read_header(backend, info.name, info.size, codec)


def test_parse_header_rejects_partial_entries_and_unknown_types(codec):
    good = ENTRY.pack(DATA, 0, 100, 0, 50, b"i" * 32)
    assert parse_header(codec, codec.encode(good)) == [PackEntry(b"i" * 32, DATA, 0, 100, 0, 50)]
    with pytest.raises(IntegrityError, match="partial"):
        parse_header(codec, codec.encode(good + b"\x00" * 10))
    with pytest.raises(IntegrityError, match="unknown blob type"):
        parse_header(codec, codec.encode(good + ENTRY.pack(7, 0, 100, 0, 50, b"j" * 32)))
    with pytest.raises(IntegrityError):
        parse_header(Codec(MasterKey.generate()), codec.encode(good))


def test_group_spans_groups_members():
    entries = [
        PackEntry(b"a" * 32, DATA, 0, 100, 0, 10),
        PackEntry(b"b" * 32, TREE, 0, 100, 10, 20),
        PackEntry(b"c" * 32, DATA, 100, 50, 0, 40),
        PackEntry(b"d" * 32, DATA, 150, 70, 0, 5),
        PackEntry(b"e" * 32, DATA, 150, 70, 5, 5),
        PackEntry(b"f" * 32, DATA, 150, 70, 10, 5),
    ]
    spans = group_spans(entries)
    assert list(spans) == [(0, 100), (100, 50), (150, 70)]
    assert [[e.blob_id[:1] for e in m] for m in spans.values()] == [[b"a", b"b"], [b"c"], [b"d", b"e", b"f"]]
    assert group_spans([]) == {}


@pytest.mark.parametrize("groups", [[], GROUPS[:2]], ids=["nothing-written", "after-groups"])
def test_abort_removes_the_staged_file(tmp_path, codec, groups):
    writer = PackWriter(codec, tmp_path / "staging")
    add_groups(writer, codec, groups)
    assert writer.path.exists()
    writer.abort()
    assert not writer.path.exists()
    assert list((tmp_path / "staging").iterdir()) == []


def test_writers_stage_distinct_files(tmp_path, codec):
    writers = [PackWriter(codec, tmp_path) for _ in range(5)]
    assert len({w.path for w in writers}) == 5
    for w in writers:
        w.abort()
