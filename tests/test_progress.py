"""The terminal progress line of backup and restore (sidecar/progress.py)."""

from __future__ import annotations

import io
import re
import time

from sidecar.progress import TerminalProgress, human_bytes


def test_line_shows_bytes_files_rate_and_eta():
    progress = TerminalProgress("backup", stream=io.StringIO())
    progress.set_total(10, 100 * 2**20)
    progress.add(4, 25 * 2**20)
    line = progress.line()
    assert line.startswith("backup [0:00:0")
    assert "25.0 MiB / 100.0 MiB  25%" in line
    assert "4 files" in line
    assert re.search(r"\d+(\.\d)? ([KMGT]i)?B/s", line)
    assert "ETA " in line


def test_without_a_total_there_is_no_eta_and_it_is_drawn_then_cleared():
    stream = io.StringIO()
    progress = TerminalProgress("restore", stream=stream, interval=0.01).start()
    progress.add(1, 1000)
    time.sleep(0.05)
    progress.finish()
    out = stream.getvalue()
    assert "\r\x1b[K" + "restore [" in out  # redrawn in place
    assert "ETA" not in out
    assert out.endswith("\r\x1b[K")  # the line is cleared before the summary is printed


def test_scan_totals_counts_the_tree(tmp_path):
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x" * 1000)
    progress = TerminalProgress("backup", stream=io.StringIO())
    progress.scan_totals(str(tmp_path))
    deadline = time.monotonic() + 5
    while progress.total_files is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (progress.total_files, progress.total_bytes) == (5, 5000)


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
