"""Packs: sealed groups of blobs, then a sealed header, then its length.

    pack   = group_0 || group_1 || ... || sealed(header) || uint32_le(len(sealed(header)))
    group  = seal(flag || body): the plaintexts of one or more blobs, concatenated,
             then compressed together (flag 1) or stored raw (flag 0)
    header = entry*, entry = type:u8 || offset:u32le || length:u32le
                             || inner:u32le || raw_length:u32le || id:32 bytes

`offset`/`length` locate the sealed group in the pack; `inner`/`raw_length`
locate the blob in the group's plaintext. A blob of 256 KiB or more is a group
of its own; smaller blobs share groups of about 512 KiB, which compress about
twice as fast and 20 % smaller than one by one. The pack's name is the SHA-256
of all its bytes, so storage damage is visible without the key.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import IntegrityError, disk_full
from sidecar.repo.backends.base import Backend
from sidecar.repo.codec import Codec

DATA = 0
TREE = 1
TYPE_NAMES = {DATA: "data", TREE: "tree"}
TYPE_CODES = {v: k for k, v in TYPE_NAMES.items()}

_ENTRY = struct.Struct("<BIIII32s")
_TRAILER = struct.Struct("<I")
TARGET_PACK_SIZE = 16 * 1024 * 1024
GROUP_ALONE = 256 * 1024  # blobs this big are sealed on their own
GROUP_TARGET = 512 * 1024  # smaller ones share a group until it holds this much


@dataclass(frozen=True, slots=True)
class PackEntry:
    blob_id: bytes
    type: int
    offset: int  # of the sealed group in the pack
    length: int  # of the sealed group
    inner: int  # of the blob in the group's plaintext
    raw_length: int  # of the blob's plaintext


@dataclass(frozen=True)
class PackInfo:
    name: str  # SHA-256 hex of the pack bytes
    path: Path  # staged file, handed to the back end
    size: int
    entries: tuple[PackEntry, ...]


def pack_object_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


class PackWriter:
    """Appends sealed groups to a staged file; `finish` seals the header and
    returns the file, fsynced, for the back end to store."""

    def __init__(self, codec: Codec, staging_dir: Path) -> None:
        self._codec = codec
        staging_dir.mkdir(parents=True, exist_ok=True)
        self.path = staging_dir / f"pack-{secrets.token_hex(12)}.tmp"
        self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self._entries: list[PackEntry] = []
        self.size = 0

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise disk_full(exc, str(self.path)) or exc from None
        self._hash.update(data)

    def add_group(self, sealed: bytes, members: list[tuple[bytes, int, int, int]]) -> None:
        """A sealed group and its blobs as (blob id, type, inner offset, raw length)."""
        self._write(sealed)
        offset, length = self.size, len(sealed)
        self._entries.extend(PackEntry(i, t, offset, length, inner, raw) for i, t, inner, raw in members)
        self.size += length

    def finish(self) -> PackInfo:
        header = b"".join(
            _ENTRY.pack(e.type, e.offset, e.length, e.inner, e.raw_length, e.blob_id) for e in self._entries
        )
        sealed = self._codec.encode(header)
        self._write(sealed)
        self._write(_TRAILER.pack(len(sealed)))
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise disk_full(exc, str(self.path)) or exc from None
        finally:
            self._file.close()
        total = self.size + len(sealed) + _TRAILER.size
        return PackInfo(self._hash.hexdigest(), self.path, total, tuple(self._entries))

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def parse_header(codec: Codec, sealed_header: bytes) -> list[PackEntry]:
    raw = codec.decode(sealed_header)
    if len(raw) % _ENTRY.size:
        raise IntegrityError("pack header has a partial entry")
    entries = []
    for blob_type, offset, length, inner, raw_length, blob_id in _ENTRY.iter_unpack(raw):
        if blob_type not in TYPE_NAMES:
            raise IntegrityError(f"pack header names unknown blob type {blob_type}")
        entries.append(PackEntry(blob_id, blob_type, offset, length, inner, raw_length))
    return entries


def read_header(backend: Backend, pack_id: str, size: int, codec: Codec) -> list[PackEntry]:
    """The entries of a stored pack, read from its tail (for `check` and `repair index`)."""
    name = pack_object_name(pack_id)
    if size < _TRAILER.size:
        raise IntegrityError(f"pack {pack_id} is too short ({size} bytes)")
    tail_len = min(size, 64 * 1024)
    tail = backend.get(name, size - tail_len, tail_len)
    (header_len,) = _TRAILER.unpack(tail[-_TRAILER.size :])
    if header_len + _TRAILER.size > size:
        raise IntegrityError(f"pack {pack_id} has an impossible header length {header_len}")
    if header_len + _TRAILER.size <= tail_len:
        sealed = tail[-_TRAILER.size - header_len : -_TRAILER.size]
    else:
        sealed = backend.get(name, size - _TRAILER.size - header_len, header_len)
    entries = parse_header(codec, sealed)
    end = max((e.offset + e.length for e in entries), default=0)
    if end + header_len + _TRAILER.size != size:
        raise IntegrityError(
            f"pack {pack_id}: header describes {end} bytes of groups, the file has {size - header_len - 4}"
        )
    return entries


def group_spans(entries: list[PackEntry]) -> dict[tuple[int, int], list[PackEntry]]:
    """The blobs of each sealed group, keyed by (offset, length)."""
    groups: dict[tuple[int, int], list[PackEntry]] = {}
    for e in entries:
        groups.setdefault((e.offset, e.length), []).append(e)
    return groups


def extract_blob(key: Any, blob_id: bytes, group: bytes, inner: int, raw_length: int) -> bytes:
    """A blob's plaintext out of its decoded group, checked against its keyed id."""
    if inner == 0 and raw_length == len(group):
        data = group
    else:
        data = group[inner : inner + raw_length]
        if len(data) != raw_length:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} lies outside its group")
    if key.blob_id(data) != blob_id:
        raise IntegrityError(f"blob {blob_id.hex()[:16]} does not match its id")
    return data
