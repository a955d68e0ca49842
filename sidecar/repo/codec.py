"""Compress-then-seal for blob groups and metadata objects.

    sealed = flag || nonce || AES-256-GCM(body, associated data = flag)
    flag 0x00: body is the data; 0x01: body is one zstd frame of the data

Data that zstd cannot shrink is stored raw.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import zstandard

from sidecar.errors import IntegrityError
from sidecar.repo.crypto import MasterKey

RAW = 0
ZSTD = 1
DEFAULT_LEVEL = 3


class Codec:
    """Encodes and decodes with one master key; safe to share between threads
    (each thread gets its own zstd contexts)."""

    def __init__(self, key: MasterKey, level: int = DEFAULT_LEVEL) -> None:
        self.key = key
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level, write_checksum=False)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(self, data: bytes | memoryview) -> bytearray:
        """Compress (when it helps) and seal."""
        if self.level > 0 and len(data) > 64:
            packed = self._compressor().compress(data)
            if len(packed) < len(data):
                return self.key.seal_framed(ZSTD, packed)
        return self.key.seal_framed(RAW, data)

    def decode(self, sealed: bytes | memoryview) -> bytes:
        """Open and decompress; `IntegrityError` when damaged."""
        flag, body = self.key.open_framed(sealed)
        if flag == RAW:
            return body
        if flag == ZSTD:
            try:
                return self._decompressor().decompress(body, max_output_size=1 << 31)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"cannot decompress: {exc}") from None
        raise IntegrityError(f"unknown compression flag {flag}")

    def encode_json(self, doc: Any) -> bytearray:
        return self.encode(orjson.dumps(doc))

    def decode_json(self, sealed: bytes | memoryview) -> Any:
        try:
            return orjson.loads(self.decode(sealed))
        except orjson.JSONDecodeError as exc:
            raise IntegrityError(f"damaged metadata: {exc}") from None
