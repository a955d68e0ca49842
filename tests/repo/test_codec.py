"""Compress-then-seal (sidecar/repo/codec.py): flag byte 0 = raw, 1 = zstd."""

from __future__ import annotations

import random
import threading

import pytest
import zstandard

from sidecar.errors import IntegrityError
from sidecar.repo.codec import RAW, ZSTD, Codec
from sidecar.repo.crypto import SEAL_OVERHEAD, MasterKey

RNG = random.Random(20240501)
RANDOM_100K = RNG.randbytes(100_000)
TEXT_300K = b"".join(b"line %06d: the same words again and again\n" % i for i in range(7000))


@pytest.fixture
def codec() -> Codec:
    return Codec(MasterKey.generate())


def framed(codec: Codec, plaintext: bytes) -> bytearray:
    """A hand-made object: first byte as the (authenticated) flag, the rest as the body."""
    if not plaintext:
        return bytearray(codec.key.seal(b""))  # too short to hold a flag
    return codec.key.seal_framed(plaintext[0], plaintext[1:])


def flag_of(codec: Codec, sealed: bytes) -> int:
    return codec.key.open_framed(sealed)[0]


@pytest.mark.parametrize(
    "data,max_ratio",
    [
        (bytes(1_000_000), 0.001),
        (b"abc" * 100_000, 0.01),
        (TEXT_300K, 0.25),
        (b"z" * 65 + b"!", 0.9),  # just over the 64-byte threshold and still worth compressing
    ],
    ids=["zeros", "repeated", "text", "tiny-compressible"],
)
def test_compressible_data_is_stored_compressed(codec, data, max_ratio):
    sealed = codec.encode(data)
    assert flag_of(codec, sealed) == ZSTD
    assert len(sealed) < len(data) * max_ratio
    assert codec.decode(sealed) == data


@pytest.mark.parametrize("size", [1, 64, 65, 1000, 100_000])
def test_random_data_is_stored_raw(codec, size):
    data = RANDOM_100K[:size]
    sealed = codec.encode(data)
    assert flag_of(codec, sealed) == RAW
    assert len(sealed) == len(data) + 1 + SEAL_OVERHEAD
    assert codec.decode(sealed) == data


@pytest.mark.parametrize("data", [b"a" * 64, b"\x00" * 10, b"ab" * 32])
def test_small_data_is_stored_raw_even_when_compressible(codec, data):
    sealed = codec.encode(data)
    assert flag_of(codec, sealed) == RAW
    assert codec.decode(sealed) == data


@pytest.mark.parametrize("data", [bytes(100_000), TEXT_300K, RANDOM_100K])
def test_level_zero_disables_compression(data):
    codec = Codec(MasterKey.generate(), level=0)
    sealed = codec.encode(data)
    assert flag_of(codec, sealed) == RAW
    assert len(sealed) == len(data) + 1 + SEAL_OVERHEAD
    assert codec.decode(sealed) == data


@pytest.mark.parametrize("level", [1, 3, 19])
def test_levels_round_trip_and_compress(level):
    codec = Codec(MasterKey.generate(), level=level)
    sealed = codec.encode(TEXT_300K)
    assert flag_of(codec, sealed) == ZSTD
    assert codec.decode(sealed) == TEXT_300K


def test_empty_data(codec):
    sealed = codec.encode(b"")
    assert len(sealed) == 1 + SEAL_OVERHEAD
    assert flag_of(codec, sealed) == RAW
    assert codec.decode(sealed) == b""
    assert codec.decode(codec.encode(memoryview(b""))) == b""


@pytest.mark.parametrize(
    "make_view",
    [
        pytest.param(lambda: memoryview(TEXT_300K), id="compressible"),
        pytest.param(lambda: memoryview(RANDOM_100K), id="random"),
        pytest.param(lambda: memoryview(TEXT_300K)[1000:50_000], id="compressible slice"),
        pytest.param(lambda: memoryview(RANDOM_100K)[10:20], id="small random slice"),
        pytest.param(lambda: memoryview(bytearray(TEXT_300K)), id="bytearray view"),
    ],
)
def test_memoryview_input(codec, make_view):
    view = make_view()
    expected = bytes(view)
    sealed = codec.encode(view)
    assert codec.decode(sealed) == expected
    assert codec.decode(memoryview(sealed)) == expected


def test_encoding_is_deterministic_in_content_only(codec):
    # a fresh nonce every time: two encodings of the same data differ but decode alike
    a, b = codec.encode(TEXT_300K), codec.encode(TEXT_300K)
    assert a != b
    assert codec.decode(a) == codec.decode(b) == TEXT_300K


@pytest.mark.parametrize(
    "plaintext,message",
    [
        (b"\x07" + b"payload", "flag 7"),
        (b"\x02", "flag 2"),
        (b"\xff" + TEXT_300K[:100], "flag 255"),
        (b"", "too short"),
        (b"\x01" + b"this is not a zstd frame", "decompress"),
        (b"\x01", "decompress"),
        (b"\x01" + zstandard.ZstdCompressor().compress(TEXT_300K)[:-10], "decompress"),
    ],
    ids=["flag-7", "flag-2", "flag-255", "empty-payload", "zstd-garbage", "zstd-empty", "zstd-truncated"],
)
def test_bad_payload_is_integrity_error(codec, plaintext, message):
    sealed = framed(codec, plaintext)
    with pytest.raises(IntegrityError, match=message):
        codec.decode(sealed)


def test_hand_made_payloads_with_valid_flags_decode(codec):
    assert codec.decode(framed(codec, b"\x00hello")) == b"hello"
    frame = zstandard.ZstdCompressor().compress(b"hello" * 100)
    assert codec.decode(framed(codec, b"\x01" + frame)) == b"hello" * 100


def test_flag_is_authenticated(codec):
    sealed = codec.encode(TEXT_300K)
    sealed[0] ^= 1  # claim "raw" for a zstd body: the tag must fail
    with pytest.raises(IntegrityError):
        codec.decode(sealed)


@pytest.mark.parametrize("data", [b"", b"short", TEXT_300K, RANDOM_100K])
def test_tampered_or_foreign_object_is_integrity_error(codec, data):
    sealed = bytearray(codec.encode(data))
    other = Codec(MasterKey.generate())
    with pytest.raises(IntegrityError):
        other.decode(bytes(sealed))
    sealed[len(sealed) // 2] ^= 0x10
    with pytest.raises(IntegrityError):
        codec.decode(bytes(sealed))
    with pytest.raises(IntegrityError):
        codec.decode(bytes(sealed[:10]))


@pytest.mark.parametrize(
    "doc",
    [
        {},
        [],
        None,
        0,
        "text",
        {"a": 1, "b": [1, 2.5, None, True], "c": {"nested": "ünïcødé ✓"}},
        {"big": list(range(20_000))},
        [{"id": "ab" * 32, "n": 2**62}],
    ],
    ids=["empty-dict", "empty-list", "null", "zero", "string", "mixed", "big", "big-int"],
)
def test_json_round_trip(codec, doc):
    assert codec.decode_json(codec.encode_json(doc)) == doc


def test_json_big_documents_are_compressed(codec):
    doc = {"packs": [{"id": "0" * 64, "blobs": [["ab" * 32, "data", 0, 10, 0, 10]] * 50}] * 50}
    sealed = codec.encode_json(doc)
    assert flag_of(codec, sealed) == ZSTD
    assert codec.decode_json(sealed) == doc


@pytest.mark.parametrize("payload", [b"not json", b"{", b'{"a": }', b"\xff\xfe"])
def test_decode_json_of_non_json_is_integrity_error(codec, payload):
    with pytest.raises(IntegrityError, match="damaged metadata"):
        codec.decode_json(codec.encode(payload))


def test_shared_between_threads(codec):
    errors: list[BaseException] = []
    datas = [TEXT_300K[i * 1000 : i * 1000 + 40_000] + bytes([i]) for i in range(8)]

    def work(data: bytes) -> None:
        try:
            for _ in range(20):
                assert codec.decode(codec.encode(data)) == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in datas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert not any(t.is_alive() for t in threads)
