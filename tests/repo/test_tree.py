"""Tree listings (sidecar/repo/tree.py): names, path safety, order, and the chunked JSON-lines text."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import orjson
import pytest

from sidecar.errors import IntegrityError
from sidecar.repo.chunker import Chunker, ChunkerParams
from sidecar.repo.tree import (
    DIR,
    FILE,
    SYMLINK,
    TYPES,
    TreeWriter,
    check_relative,
    encode_entry,
    entry_path,
    get_name,
    path_key,
    put_name,
    read_lines,
    read_texts,
    read_tree,
)
from sidecar.repo.walk import Walker

SMALL = ChunkerParams(min_size=256, avg_size=1024, max_size=4096)


class Store(dict):
    """Content-addressed blob store for TreeWriter/read_tree."""

    def put(self, data: bytes) -> bytes:
        assert isinstance(data, bytes)
        blob_id = hashlib.sha256(data).digest()
        self[blob_id] = data
        return blob_id


# ---- names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,stored_as_text",
    [
        (b"plain.txt", True),
        (b"", True),
        ("ünïcødé/文件.txt".encode(), True),
        ("emoji 🎉".encode(), True),
        (b'with\nnewline and "quotes" and \\ and \x01', True),
        (b"\xff\xfe", False),
        (b"caf\xe9", False),  # latin-1
        (b"ok/\x80/bad", False),
        ("ü".encode()[:1], False),  # truncated UTF-8 sequence
        (b"\xed\xa0\x80", False),  # an encoded surrogate is not valid UTF-8
    ],
)
@pytest.mark.parametrize("key", ["path", "target"])
def test_put_name_get_name(raw, stored_as_text, key):
    entry: dict = {}
    put_name(entry, key, raw)
    if stored_as_text:
        assert entry == {key: raw.decode("utf-8")}
    else:
        assert entry == {f"{key}_b64": base64.b64encode(raw).decode("ascii")}
    assert get_name(entry, key) == raw
    # survives the JSON form
    assert get_name(orjson.loads(encode_entry(entry)), key) == raw


def test_get_name_absent():
    assert get_name({}, "path") is None
    assert get_name({"path_b64": "AA=="}, "target") is None


def test_entry_path():
    assert entry_path({"path": "a/b"}) == b"a/b"
    assert entry_path({"path_b64": base64.b64encode(b"\xff").decode()}) == b"\xff"
    with pytest.raises(IntegrityError):
        entry_path({"type": FILE})


# ---- path safety -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [b".", b"a", b"a/b/c", b".hidden", b"...", b"a/..b", b"a..", b"a/b.", b"\xff\xfe/x", b"a\\..\\b", b"a b/c d"],
)
def test_check_relative_accepts(path):
    assert check_relative(path) == path


@pytest.mark.parametrize(
    "path",
    [
        b"",
        b"/",
        b"/abs",
        b"/a/b",
        b"a/../b",
        b"..",
        b"../a",
        b"a/..",
        b"a//b",
        b"a/",
        b"./a",
        b"a/./b",
        b"a/.",
        b"a\0b",
        b"\0",
        b"a/b\0",
        b"//a",
    ],
)
def test_check_relative_refuses(path):
    with pytest.raises(IntegrityError, match="unsafe path"):
        check_relative(path)


# ---- order -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "before,after",
    [
        (b".", b"a"),
        (b".", b"\x00"),
        (b"a", b"a/b"),  # a directory comes right before its children
        (b"a/b", b"a-c"),  # ... and its children before its later siblings
        (b"a/b", b"a.b"),
        (b"a/z/z/z", b"a0"),
        (b"B", b"a"),  # bytes, not case-folded
        (b"a", b"b"),
        (b"a/b", b"a/b/c"),
        (b"a/b/c", b"a/c"),
        (b"z", b"\xff"),
    ],
)
def test_path_key_order(before, after):
    assert path_key(before) < path_key(after)


def test_path_key_is_not_plain_byte_order():
    paths = [b"a-c", b"a/b", b"a"]
    assert sorted(paths) == [b"a", b"a-c", b"a/b"]
    assert sorted(paths, key=path_key) == [b"a", b"a/b", b"a-c"]


def test_path_key_equals_the_walker_order(tmp_path: Path):
    root = tmp_path / "src"
    for d in ["a/b", "a/x", "a-c", "B", "a.b/in", "a0"]:
        (root / d).mkdir(parents=True)
    for f in ["a/b/c", "a/b/c-d", "a/b.txt", "a/x/1", "a-c/z", "b", "a.b/in/f", "Z", "a0/0"]:
        (root / f).write_bytes(b"")
    os.close(os.open(os.fsencode(root) + b"/\xff\xfe", os.O_CREAT | os.O_WRONLY))
    walked = [rel for rel, _, _ in Walker(os.fsencode(root))]
    assert walked[0] == b"."
    assert walked == sorted(walked, key=path_key)
    assert walked != sorted(walked)
    assert walked == [
        b".",
        b"B",
        b"Z",
        b"a",
        b"a/b",
        b"a/b/c",
        b"a/b/c-d",
        b"a/b.txt",
        b"a/x",
        b"a/x/1",
        b"a-c",
        b"a-c/z",
        b"a.b",
        b"a.b/in",
        b"a.b/in/f",
        b"a0",
        b"a0/0",
        b"b",
        b"\xff\xfe",
    ]


# ---- writing and reading ---------------------------------------------------------------


def make_entries(n: int) -> list[dict]:
    entries: list[dict] = [{"type": DIR, "path": ".", "mode": 0o755}]
    for i in range(n):
        e: dict = {"type": FILE, "size": i * 37, "mode": 0o644, "mtime_ns": 1_700_000_000_000_000_000 + i}
        put_name(e, "path", b"dir%03d/file-%05d" % (i // 40, i) if i % 97 else b"dir/\xff-%d" % i)
        e["content"] = [hashlib.sha256(b"%d" % i).hexdigest()] * (i % 3)
        entries.append(e)
    link: dict = {"type": SYMLINK, "path": "zz-link"}
    put_name(link, "target", "../ünïcødé\n".encode())
    entries.append(link)
    return entries


def write_tree(entries: list[dict], store: Store, params: ChunkerParams = SMALL, seed: int = 42) -> list[bytes]:
    writer = TreeWriter(Chunker(params, seed), store.put)
    for e in entries:
        writer.add(e)
    ids = writer.finish()
    assert writer.count == len(entries)
    assert writer.blob_ids == ids
    return ids


def test_tree_round_trip_over_many_blobs():
    entries = make_entries(5000)
    store = Store()
    ids = write_tree(entries, store)
    assert len(ids) > 50
    assert all(len(store[i]) <= SMALL.max_size for i in ids)
    assert list(read_tree(ids, store.__getitem__)) == entries
    text = b"".join(store[i] for i in ids)
    assert text == b"".join(encode_entry(e) for e in entries)
    assert text.count(b"\n") == len(entries)


def test_tree_text_is_chunked_like_the_whole_text():
    entries = make_entries(3000)
    store = Store()
    ids = write_tree(entries, store)
    text = b"".join(encode_entry(e) for e in entries)
    chunker = Chunker(SMALL, 42)
    assert ids == [hashlib.sha256(bytes(c)).digest() for c in chunker.split_buffer(text)]


def test_unchanged_parts_of_a_listing_give_the_same_blobs():
    entries = make_entries(4000)
    store = Store()
    before = write_tree(entries, store)
    assert write_tree(entries, Store()) == before  # deterministic
    changed = [dict(e) for e in entries]
    changed[2000]["size"] = 123_456_789
    after = write_tree(changed, store)
    assert list(read_tree(after, store.__getitem__)) == changed
    assert len(set(after) - set(before)) <= 2
    assert len(set(after) & set(before)) >= len(before) - 2


@pytest.mark.parametrize("count", [0, 1, 2, 10])
def test_small_trees(count):
    entries = make_entries(count)[:count]
    store = Store()
    ids = write_tree(entries, store)
    assert (ids == []) == (count == 0)
    assert list(read_tree(ids, store.__getitem__)) == entries


def test_read_tree_joins_lines_split_across_blobs():
    lines = [encode_entry({"type": FILE, "path": f"f{i}"}) for i in range(3)]
    text = b"".join(lines)
    pieces = [text[:5], text[5:6], text[6 : len(lines[0])], text[len(lines[0]) : -1], text[-1:]]
    store = Store()
    ids = [store.put(p) for p in pieces]
    assert [e["path"] for e in read_tree(ids, store.__getitem__)] == ["f0", "f1", "f2"]


def test_read_texts_are_whole_lines_whatever_the_chunks():
    """Each piece is the lines ended in one chunk (with the start carried over from the ones
    before), so its split gives exactly read_lines' lines, in order."""
    import random

    rng = random.Random(5)
    lines = [encode_entry({"type": FILE, "path": "f" * rng.randrange(0, 40) + str(i)}) for i in range(60)]
    lines.insert(7, b"\n")  # an empty line is kept (and refused later, when parsed)
    text = b"".join(lines)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(0, 12)))
        store = Store()
        ids = [store.put(text[a:b]) for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        texts = list(read_texts(ids, store.__getitem__))
        assert len(texts) <= len(ids)
        assert [line for t in texts for line in t.split(b"\n")] == [x[:-1] for x in lines]
        assert list(read_lines(ids, store.__getitem__)) == [x[:-1] for x in lines]


def test_read_texts_of_two_parts_of_the_chunks_are_the_whole():
    """The chunks before a cut (`open_end`: the line they end inside is left out) and the ones
    after it (`first`: that line's start, from the chunk before them) give all lines, once."""
    import random

    rng = random.Random(6)
    lines = [encode_entry({"type": FILE, "path": "f" * rng.randrange(0, 40) + str(i)}) for i in range(60)]
    text = b"".join(lines)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(1, 12)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        store = Store()
        ids = [store.put(c) for c in chunks]
        for at in range(1, len(ids)):
            carry = b"".join(chunks[:at]).rpartition(b"\n")[2]
            head = list(read_texts(ids[:at], store.__getitem__, open_end=True))
            tail = list(read_texts(ids[at:], store.__getitem__, first=carry))
            got = [line for t in head + tail for line in t.split(b"\n")]
            assert got == [x[:-1] for x in lines], (cuts, at)
        if not chunks[0].endswith(b"\n"):  # without open_end, a part that ends inside a line is refused
            with pytest.raises(IntegrityError):
                list(read_texts(ids[:1], store.__getitem__))


def test_read_tree_is_lazy():
    store = Store()
    ids = [store.put(encode_entry({"type": FILE, "path": f"f{i}"})) for i in range(3)]
    loaded = []

    def load(blob_id: bytes) -> bytes:
        loaded.append(blob_id)
        return store[blob_id]

    it = read_tree(ids, load)
    assert next(it)["path"] == "f0"
    assert loaded == ids[:1]


@pytest.mark.parametrize(
    "text",
    [
        b"not json\n",
        b"{\n",
        b'{"type": "file", "path": "a"\n',
        b"\n",
        b'{"path": "a"}\n',
        b'{"type": "bogus", "path": "a"}\n',
        b'{"type": null, "path": "a"}\n',
        b'{"type": 1, "path": "a"}\n',
        b'{"type": "FILE", "path": "a"}\n',
        b'["file", "a"]\n',
        b'"file"\n',
        b"null\n",
        b'{"type": "file", "path": "a"}\n{"type": "dir"}\ngarbage\n',
        b'{"type": "file", "path": "a"}\n\n{"type": "file", "path": "b"}\n',
    ],
)
def test_read_tree_refuses_lines_that_are_not_entries(text):
    store = Store()
    with pytest.raises(IntegrityError):
        list(read_tree([store.put(text)], store.__getitem__))


@pytest.mark.parametrize(
    "pieces",
    [
        [b'{"type": "file", "path": "a"}'],
        [b'{"type": "file", "path": "a"}\n{"type": "file", "path": "b"}'],
        [b'{"type": "file", "path": "a"}\n', b'{"type": "file"'],
        [b'{"type": "file", "path": "a"}\n', b"   "],
    ],
)
def test_read_tree_refuses_text_without_final_newline(pieces):
    store = Store()
    with pytest.raises(IntegrityError, match="newline"):
        list(read_tree([store.put(p) for p in pieces], store.__getitem__))


@pytest.mark.parametrize("type_", sorted(TYPES))
def test_every_entry_type_is_readable(type_):
    store = Store()
    blob_id = store.put(encode_entry({"type": type_, "path": "x"}))
    assert list(read_tree([blob_id], store.__getitem__)) == [{"type": type_, "path": "x"}]


def test_encode_entry_is_one_line():
    line = encode_entry({"type": FILE, "path": "a\nb", "x": "\r\n"})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
