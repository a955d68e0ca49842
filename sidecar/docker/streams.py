"""Reading Docker's streams ahead of their consumer.

Docker hands an archive or an exec's output over in 32 KiB pieces; reading
them in a thread, up to a bound, and joining them into ~1 MiB blocks lets the
engine keep producing while this process chunks and hashes what came before,
and saves the consumer ~30 times as many small reads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

PREFETCH_BLOCKS = 32  # blocks of about COALESCE bytes read ahead
COALESCE = 1 << 20
_END = object()


def prefetched(chunks: Iterable[bytes], depth: int = PREFETCH_BLOCKS) -> Iterator[bytes]:
    """`chunks`, read in a thread up to `depth` blocks ahead and joined into blocks of
    about COALESCE bytes (measured: a 2 GiB volume through the archive API 25 -> 22 s)."""
    ahead: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            parts: list[bytes] = []
            size = 0
            for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= COALESCE:
                    if not put(b"".join(parts)):
                        return
                    parts, size = [], 0
            if parts and not put(b"".join(parts)):
                return
            put(_END)
        except BaseException as exc:
            put(exc)

    thread = threading.Thread(target=pump, name="docker-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
