"""The lean tar reader against archives written by Python's tarfile in all three formats."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from sidecar.repo.tarread import ChunkReader, TarError, members

LONG = "d/" + "n" * 150 + "/" + "é" * 60 + "-file"  # over 255 bytes: GNU long names, pax path
USTAR_LONG = "d/" + "n" * 120 + "/" + "m" * 60  # over 100 bytes: ustar's prefix field


def long_name(fmt: int) -> str:
    return USTAR_LONG if fmt == tarfile.USTAR_FORMAT else LONG


def build(fmt: int) -> tuple[bytes, dict[str, bytes]]:
    buf = io.BytesIO()
    contents = {"small": b"hello", long_name(fmt): os.urandom(70_000), "empty": b"", "unread": os.urandom(5000)}
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as t:
        d = tarfile.TarInfo("d")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o2755, 1_600_000_000
        t.addfile(d)
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o4640, 33, 33, 1_600_000_001
            if name == "small" and fmt != tarfile.USTAR_FORMAT:
                info.uid = 3_000_000  # over the octal field's 2097151: base-256 (GNU) or pax
            if name == "small" and fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"mtime": "1600000001.123456789", "SCHILY.xattr.user.bin": "\x00\x01v"}
            t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("hard")
        link.type, link.linkname = tarfile.LNKTYPE, "small"
        t.addfile(link)
        sym = tarfile.TarInfo("sym")
        sym.type, sym.linkname = tarfile.SYMTYPE, "t" * 120 if fmt != tarfile.USTAR_FORMAT else "target"
        t.addfile(sym)
        dev = tarfile.TarInfo("dev")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        t.addfile(dev)
        fifo = tarfile.TarInfo("fifo")
        fifo.type = tarfile.FIFOTYPE
        t.addfile(fifo)
    return buf.getvalue(), contents


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("piece", [7, 512, 1 << 20])
def test_members_match_what_tarfile_wrote(fmt, piece):
    data, contents = build(fmt)
    got = {}
    for m in members(ChunkReader(pieces(data, piece))):
        name = m.name.decode().rstrip("/")
        if m.content is not None and name != "unread":  # "unread" is skipped by the reader itself
            got[name] = (m, m.content.read_all())
        else:
            got[name] = (m, None)
    assert set(got) == {"d", "small", long_name(fmt), "empty", "unread", "hard", "sym", "dev", "fifo"}
    for name, body in contents.items():
        if name != "unread":
            assert got[name][1] == body, name
    small = got["small"][0]
    assert (small.type, small.mode, small.gid, small.size) == (b"0", 0o4640, 33, 5)
    assert small.uid == (33 if fmt == tarfile.USTAR_FORMAT else 3_000_000)
    assert got["d"][0].type == b"5" and got["d"][0].mode == 0o2755
    assert got["hard"][0].type == b"1" and got["hard"][0].linkname == b"small"
    assert got["sym"][0].linkname == (b"t" * 120 if fmt != tarfile.USTAR_FORMAT else b"target")
    assert (got["dev"][0].type, got["dev"][0].devmajor, got["dev"][0].devminor) == (b"3", 1, 3)
    assert got["fifo"][0].type == b"6"
    if fmt == tarfile.PAX_FORMAT:
        assert small.mtime_ns == 1_600_000_001_123_456_789
        assert small.xattrs == [(b"user.bin", b"\x00\x01v")]
    else:
        assert small.mtime_ns == 1_600_000_001_000_000_000


def test_damaged_header_and_truncated_stream_are_errors():
    data, _ = build(tarfile.PAX_FORMAT)
    damaged = bytearray(data)
    damaged[600 + 1024] ^= 0xFF  # somewhere in the first headers
    with pytest.raises(TarError):
        for m in members(ChunkReader([bytes(damaged)])):
            if m.content is not None:
                m.content.read_all()
    with pytest.raises(TarError, match="ended early"):
        for m in members(ChunkReader(pieces(data[:3000], 100))):
            if m.content is not None:
                m.content.read_all()
    with pytest.raises(TarError, match="ended early"):
        list(members(ChunkReader([])))
