"""A progress line on a terminal: bytes, files, rate and ETA."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TerminalProgress:
    """Thread-safe counters, drawn on `stream` every `interval` seconds.
    Totals may be set later (a background scan) or never (no ETA then)."""

    def __init__(self, verb: str, stream: TextIO = sys.stderr, interval: float = 0.5) -> None:
        self.verb = verb
        self.stream = stream
        self.interval = interval
        self.files = 0
        self.bytes = 0
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> TerminalProgress:
        self._thread.start()
        return self

    def add(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files += files
            self.bytes += nbytes

    def set_total(self, files: int, nbytes: int) -> None:
        self.total_files, self.total_bytes = files, nbytes

    def scan_totals(self, root: str | bytes) -> None:
        """Count files and bytes under `root` in a background thread (for the ETA)."""

        def scan() -> None:
            files = size = 0
            for dirpath, _dirs, names in os.walk(root):
                if self._stop.is_set():
                    return
                for name in names:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    files += 1
                    size += st.st_size
            self.set_total(files + (self.total_files or 0), size + (self.total_bytes or 0))

        threading.Thread(target=scan, name="progress-scan", daemon=True).start()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = self.bytes / elapsed
        text = f"{self.verb} [{_clock(elapsed)}] {human_bytes(self.bytes)}"
        if self.total_bytes:
            pct = min(100.0, 100.0 * self.bytes / self.total_bytes)
            text += f" / {human_bytes(self.total_bytes)} {pct:3.0f}%"
        text += f"  {self.files} files  {human_bytes(rate)}/s"
        if self.total_bytes and rate > 0 and self.bytes < self.total_bytes:
            text += f"  ETA {_clock((self.total_bytes - self.bytes) / rate)}"
        return text

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()

    def finish(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()
