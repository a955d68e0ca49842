"""The blob index: blob id -> (pack, group offset, group length, inner offset, raw length, type).

On disk: sealed JSON objects `index/<id>`, each
    {"supersedes": [index ids],
     "packs": [{"id": pack, "blobs": [[blob, type, offset, length, inner, raw_length], ...]}]}
In memory: one int per blob (no tuple, no per-entry objects), so a
repository of millions of blobs fits in a small sidecar.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sidecar.errors import IntegrityError
from sidecar.repo.pack import TYPE_CODES, TYPE_NAMES, PackEntry, PackInfo

_M32 = 0xFFFFFFFF
_HEX = "0123456789abcdef"


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: str
    type: int
    offset: int  # of the sealed group in the pack
    length: int  # of the sealed group
    inner: int  # of the blob in the group's plaintext
    raw_length: int


class Index:
    """All blobs of a repository. Reads are safe from any thread; `add_pack`
    runs under the caller's lock."""

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._blobs: dict[bytes, int] = {}
        self.loaded_ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def _pack_number(self, pack_id: str) -> int:
        n = self._pack_numbers.get(pack_id)
        if n is None:
            n = self._pack_numbers[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        return n

    def add(self, blob_id: bytes, pack_id: str, e: PackEntry) -> None:
        if blob_id in self._blobs:
            return  # a duplicate (two backups stored the same blob); the first copy serves
        head = self._pack_number(pack_id) << 1 | e.type
        self._blobs[blob_id] = (((head << 32 | e.offset) << 32 | e.length) << 32 | e.inner) << 32 | e.raw_length

    def add_pack(self, info: PackInfo) -> None:
        for e in info.entries:
            self.add(e.blob_id, info.name, e)

    def get(self, blob_id: bytes) -> BlobLocation | None:
        code = self._blobs.get(blob_id)
        if code is None:
            return None
        raw, inner = code & _M32, (code >> 32) & _M32
        length, offset = (code >> 64) & _M32, (code >> 96) & _M32
        head = code >> 128
        return BlobLocation(self._packs[head >> 1], head & 1, offset, length, inner, raw)

    def blob_ids(self) -> Iterator[bytes]:
        return iter(self._blobs)

    def pack_ids(self) -> set[str]:
        return set(self._packs)

    def entries_by_pack(self) -> dict[str, list[tuple[bytes, BlobLocation]]]:
        out: dict[str, list[tuple[bytes, BlobLocation]]] = {}
        for blob_id in self._blobs:
            loc = self.get(blob_id)
            assert loc is not None
            out.setdefault(loc.pack_id, []).append((blob_id, loc))
        return out

    def load_document(self, doc: dict) -> None:
        for pack in iter_index_packs(doc):
            for e in pack[1]:
                self.add(e.blob_id, pack[0], e)


def _u32(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _M32:
        raise ValueError(f"{value!r} is not an unsigned 32-bit number")
    return value


def iter_index_packs(doc: dict) -> Iterator[tuple[str, list[PackEntry]]]:
    """(pack id, entries) of an index document, validated."""
    try:
        for pack in doc["packs"]:
            pack_id = pack["id"]
            if not isinstance(pack_id, str) or len(pack_id) != 64 or pack_id.strip(_HEX):
                raise ValueError(f"bad pack id {pack_id!r}")
            entries = []
            for blob_hex, type_name, offset, length, inner, raw in pack["blobs"]:
                blob_id = bytes.fromhex(blob_hex)
                if len(blob_id) != 32:
                    raise ValueError(f"bad blob id {blob_hex!r}")
                entries.append(
                    PackEntry(blob_id, TYPE_CODES[type_name], _u32(offset), _u32(length), _u32(inner), _u32(raw))
                )
            yield pack_id, entries
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"damaged index document: {exc!r}") from None


def index_document(packs: Iterable[tuple[str, Iterable[PackEntry]]], supersedes: Iterable[str] = ()) -> dict:
    return {
        "supersedes": sorted(supersedes),
        "packs": [
            {
                "id": pack_id,
                "blobs": [
                    [e.blob_id.hex(), TYPE_NAMES[e.type], e.offset, e.length, e.inner, e.raw_length] for e in entries
                ],
            }
            for pack_id, entries in packs
        ],
    }
