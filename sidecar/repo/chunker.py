"""Content-defined chunking with FastCDC (pyfastcdc).

Boundaries depend on content, so an insert in the middle of a large file
changes one or two chunks, not every chunk after it. The gear table is seeded
with a secret derived from the master key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC


@dataclass(frozen=True)
class ChunkerParams:
    """Stored in the repository config; every backup into it uses the same."""

    min_size: int = 512 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024
    normalization: int = 1

    def to_json(self) -> dict[str, int | str]:
        return {
            "algorithm": "fastcdc-2020",
            "min_size": self.min_size,
            "avg_size": self.avg_size,
            "max_size": self.max_size,
            "normalization": self.normalization,
        }

    @classmethod
    def from_json(cls, doc: dict) -> ChunkerParams:
        if doc.get("algorithm") != "fastcdc-2020":
            raise ValueError(f"unknown chunker algorithm {doc.get('algorithm')!r}")
        return cls(int(doc["min_size"]), int(doc["avg_size"]), int(doc["max_size"]), int(doc["normalization"]))


class Chunker:
    """Cuts buffers and streams into chunks. Thread-safe: pyfastcdc's cutters
    keep their state in the iterator, not in the FastCDC object."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalization,  # type: ignore[arg-type]
            seed=seed,
        )

    def split_buffer(self, data: bytes) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer, as views into it (no copy)."""
        if len(data) <= self.params.min_size:
            if data:
                yield memoryview(data)
            return
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data

    def split_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Chunks of a stream, as views into blocks of at most twice the largest
        chunk (sized to the data: a small file costs a small buffer). A chunk is
        cut only with a full window ahead of it (or at the end of the stream),
        so the boundaries are the same as `split_buffer` on the whole content."""
        window = self.params.max_size
        pending = b""
        eof = False
        while not eof:
            want = 2 * window - len(pending)
            more = _read_full(stream, want)
            eof = len(more) < want
            block = pending + more if pending else more
            if not block:
                return
            limit = len(block) if eof else len(block) - window
            view = memoryview(block)
            done = 0
            for chunk in self._cdc.cut_buf(view) if len(block) > self.params.min_size else ():
                if chunk.offset >= limit and not eof:
                    break
                yield chunk.data
                done = chunk.offset + chunk.length
            if len(block) <= self.params.min_size:  # the whole (short) rest of the stream
                yield view
                return
            pending = bytes(view[done:]) if not eof else b""


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Read `size` bytes unless the stream ends first (pipes return short reads)."""
    data = stream.read(size)
    if data is None:
        data = b""
    if len(data) == size or not data:
        return data
    parts = [data]
    have = len(data)
    while have < size:
        part = stream.read(size - have)
        if not part:
            break
        parts.append(part)
        have += len(part)
    return b"".join(parts)
