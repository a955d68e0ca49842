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

    def stream_buffer(self) -> bytearray:
        """A buffer for `split_stream`, to reuse from one stream to the next."""
        return bytearray(2 * self.params.max_size)

    def split_stream(self, stream: BinaryIO, buffer: bytearray | None = None) -> Iterator[memoryview]:
        """Chunks of a stream, as views into one buffer of twice the largest chunk
        (`buffer`, reused across streams, or a new one). Each view is valid only
        until the next is asked for: copy what must be kept. A chunk is cut only
        with a full window ahead of it (or at the end of the stream), so the
        boundaries are the same as `split_buffer` on the whole content."""
        window = self.params.max_size
        buf = buffer if buffer is not None and len(buffer) >= 2 * window else bytearray(2 * window)
        view = memoryview(buf)
        have = 0
        eof = False
        while not eof:
            have, eof = _fill(stream, view, have)
            if not have:
                return
            if have <= self.params.min_size:  # the whole (short) rest of the stream
                yield view[:have]
                return
            limit = have if eof else have - window
            done = 0
            for chunk in self._cdc.cut_buf(view[:have]):
                if chunk.offset >= limit and not eof:
                    break
                yield chunk.data
                done = chunk.offset + chunk.length
            if not eof:
                buf[: have - done] = buf[done:have]  # same length: moves the rest to the front
                have -= done


def _fill(stream: BinaryIO, view: memoryview, have: int) -> tuple[int, bool]:
    """Read into `view[have:]` until it is full or the stream ends (pipes give
    short reads): (bytes now in the buffer, whether the stream ended)."""
    readinto = getattr(stream, "readinto", None)
    while have < len(view):
        if readinto is not None:
            n = readinto(view[have:])
        else:
            data = stream.read(len(view) - have)
            n = len(data) if data else 0
            view[have : have + n] = data or b""
        if not n:
            return have, True
        have += n
    return have, False
