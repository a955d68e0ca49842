"""Trees: the sorted JSON-lines listing of one source.

One JSON object per line, in depth-first order with siblings sorted by the
bytes of their names (the root is "."). The text is chunked like file data, so
an unchanged part of a listing is stored once. Entries are plain dicts on the
hot path; the helpers here hide the bytes/str details of names.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import orjson

from sidecar.errors import IntegrityError
from sidecar.repo.chunker import Chunker

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
FIFO = "fifo"
DEVICE = "device"
SOCKET = "socket"
TYPES = frozenset({FILE, DIR, SYMLINK, HARDLINK, FIFO, DEVICE, SOCKET})


def put_name(entry: dict, key: str, raw: bytes) -> None:
    """Store a path-like value as UTF-8 text when it is valid UTF-8, else as `<key>_b64`."""
    try:
        entry[key] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry[key + "_b64"] = base64.b64encode(raw).decode("ascii")


def get_name(entry: dict, key: str) -> bytes | None:
    text = entry.get(key)
    if text is not None:
        return text.encode("utf-8")
    b64 = entry.get(key + "_b64")
    return None if b64 is None else base64.b64decode(b64)


def entry_path(entry: dict) -> bytes:
    path = get_name(entry, "path")
    if path is None:
        raise IntegrityError("tree entry without a path")
    return path


def path_key(path: bytes) -> tuple[bytes, ...]:
    """Sort key of the tree order: depth-first, siblings by name bytes."""
    return () if path == b"." else tuple(path.split(b"/"))


def check_relative(path: bytes) -> bytes:
    """Refuse paths that could escape a restore target ("..", absolute, empty parts)."""
    if path == b".":
        return path
    wrapped = b"/" + path + b"/"
    if not path or path[0] == 47 or b"\0" in path or b"//" in wrapped or b"/./" in wrapped or b"/../" in wrapped:
        raise IntegrityError(f"unsafe path in tree: {path!r}")
    return path


class TreeValidator:
    """Checks, entry by entry, that a listing cannot make a reader write outside
    its target: paths are relative and strictly increasing in tree order (no
    duplicates, so a directory cannot later become a symlink), every parent is a
    directory entry seen earlier, and a hard link points at an earlier entry
    whose parent is such a directory (never through a symlink)."""

    def __init__(self, implicit_root: bool = True) -> None:
        self.dirs: set[bytes] = {b"."} if implicit_root else set()
        self._last: tuple[bytes, ...] | None = None

    def check(self, entry: dict) -> bytes:
        """The entry's checked relative path; `IntegrityError` when unsafe."""
        rel = check_relative(entry_path(entry))
        key = path_key(rel)
        if self._last is not None and key <= self._last:
            raise IntegrityError(f"unsafe tree: {rel!r} is out of order or listed twice")
        self._last = key
        if rel != b".":
            parent = rel.rpartition(b"/")[0] or b"."
            if parent not in self.dirs:
                raise IntegrityError(f"unsafe tree: {rel!r} is not below a directory of the snapshot")
        if entry["type"] == DIR:
            self.dirs.add(rel)
        elif entry["type"] == HARDLINK:
            link = check_relative(get_name(entry, "link") or b"")
            if (link.rpartition(b"/")[0] or b".") not in self.dirs or path_key(link) >= key:
                raise IntegrityError(f"unsafe tree: hard link {rel!r} points at {link!r}")
        return rel


def encode_entry(entry: dict) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


class TreeWriter:
    """Turns entries into JSON lines and hands content-defined chunks of the
    text to `store(chunk) -> blob id` as the listing grows."""

    def __init__(self, chunker: Chunker, store: Callable[[bytes], bytes]) -> None:
        self._chunker = chunker
        self._store = store
        self._buffer = bytearray()
        self._flush_at = 2 * chunker.params.max_size
        self.blob_ids: list[bytes] = []
        self.count = 0

    def add(self, entry: dict) -> None:
        self._buffer += encode_entry(entry)
        self.count += 1
        if len(self._buffer) >= self._flush_at:
            self._cut(final=False)

    def add_lines(self, text: bytes, count: int = 1) -> None:
        """Add `count` encoded entries, joined by newlines, without the last newline (lines of
        an earlier listing, reused verbatim)."""
        self._buffer += text
        self._buffer += b"\n"
        self.count += count
        if len(self._buffer) >= self._flush_at:
            self._cut(final=False)

    def _cut(self, final: bool) -> None:
        """Store the chunks that have a full window ahead of them (all, when final)."""
        buffer = self._buffer
        limit = len(buffer) if final else len(buffer) - self._chunker.params.max_size
        done = 0
        chunks = self._chunker.split_buffer(buffer)
        try:
            for chunk in chunks:
                with chunk:  # release the view at once: the buffer is resized below
                    if not final and done >= limit:
                        break
                    self.blob_ids.append(self._store(bytes(chunk)))
                    done += len(chunk)
        finally:
            chunks.close()
        del buffer[:done]

    def finish(self) -> list[bytes]:
        if self._buffer:
            self._cut(final=True)
        return self.blob_ids


def read_tree(blob_ids: list[bytes], load_blob: Callable[[bytes], bytes]) -> Iterator[dict]:
    """Entries of a tree, in order, loading one chunk of text at a time."""
    for line in read_lines(blob_ids, load_blob):
        yield parse_line(line)


def read_lines(blob_ids: list[bytes], load_blob: Callable[[bytes], bytes]) -> Iterator[bytes]:
    """The raw lines of a tree (without their newline), in order, unparsed."""
    for text in read_texts(blob_ids, load_blob):
        yield from text.split(b"\n")


def read_texts(
    blob_ids: list[bytes], load_blob: Callable[[bytes], bytes], first: bytes = b"", open_end: bool = False
) -> Iterator[bytes]:
    """The text of a tree in pieces of whole lines, one per chunk loaded: a piece is its
    lines joined by newlines, without the last newline (`piece.split(b"\\n")` are the lines).
    For a part of a tree's chunks: `first` is the start of their first line (the end of the
    chunk before them), and with `open_end` a last line that goes on in the next chunk is left out."""
    carry = first
    for blob_id in blob_ids:
        text = carry + load_blob(blob_id)
        end = text.rfind(b"\n")
        if end < 0:  # no line ends in this chunk
            carry = text
            continue
        carry = text[end + 1 :]
        yield text[:end]
    if carry and not open_end:
        raise IntegrityError("tree text does not end with a newline")


_PATH_HEAD = b'{"path":"'
_BLOBS_KEY = b',"blobs":['


def line_path(line: bytes) -> bytes | None:
    """The path of a raw tree line without parsing it, when it is plain (no JSON
    escapes, not base64); None when the line must be parsed to know it."""
    if not line.startswith(_PATH_HEAD):
        return None
    end = line.find(b'"', 9)
    path = line[9:end]
    return None if end < 0 or b"\\" in path else path


def line_blob_ids(line: bytes) -> list[bytes] | None:
    """The blob ids of a raw file line (`blobs` is a file entry's last key); None
    when the line does not have that shape. No other key can hold the text
    `,"blobs":[`: a quote inside a JSON string is always escaped."""
    if line[-78:-67] == b',"blobs":["' and line[-3:] == b'"]}':  # one blob, the most common
        try:
            return [bytes.fromhex(line[-67:-3].decode("ascii"))]
        except (UnicodeDecodeError, ValueError):
            return None
    at = line.rfind(_BLOBS_KEY)
    if at < 0 or not line.endswith(b"]}"):
        return None
    listed = line[at + len(_BLOBS_KEY) : -2]
    if not listed:
        return []
    hexes = listed.replace(b'","', b"")
    if hexes[:1] != b'"' or hexes[-1:] != b'"':
        return None
    try:
        raw = bytes.fromhex(hexes[1:-1].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if len(raw) != 32 * (listed.count(b",") + 1):
        return None
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def parse_line(line: bytes) -> dict:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise IntegrityError(f"damaged tree line: {exc}") from None
    if not isinstance(entry, dict) or entry.get("type") not in TYPES:
        raise IntegrityError(f"tree line is not an entry: {line[:80]!r}")
    return entry
