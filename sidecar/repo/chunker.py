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

    def split_stream(self, stream: BinaryIO) -> Iterator[bytes]:
        """Chunks of a stream, each copied out (the cutter reuses its buffer)."""
        for chunk in self._cdc.cut_stream(stream):
            yield bytes(chunk.data)
