"""A queue bounded by bytes, not items, that can be failed to wake every waiter.

The backup pipeline's stages talk through these so memory stays flat whatever
the data size, and an error in one stage stops the others instead of leaving
them blocked forever.
"""

from __future__ import annotations

import collections
import threading
from typing import Any


class QueueClosed(Exception):
    """The queue was closed; `error` says why when a stage failed."""


class ByteBoundedQueue:
    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._used = 0
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.error: BaseException | None = None

    def put(self, item: Any, size: int) -> None:
        with self._cond:
            while self._used and self._used + size > self._max and not self._closed:
                self._cond.wait()
            if self._closed:
                raise QueueClosed() from self.error
            self._items.append((item, size))
            self._used += size
            self._cond.notify_all()

    def get(self) -> Any:
        """The next item, or raises `QueueClosed` once closed and drained."""
        with self._cond:
            while not self._items:
                if self._closed:
                    raise QueueClosed() from self.error
                self._cond.wait()
            item, size = self._items.popleft()
            self._used -= size
            self._cond.notify_all()
            return item

    def close(self, error: BaseException | None = None) -> None:
        """No more puts. With an error, pending items are dropped too."""
        with self._cond:
            self._closed = True
            if error is not None:
                if self.error is None:
                    self.error = error
                self._items.clear()
                self._used = 0
            self._cond.notify_all()
