"""Master key, AEAD sealing, keyed blob ids and passphrase-wrapped key files (sidecar/repo/crypto.py)."""

from __future__ import annotations

import base64
import hashlib
import json

import blake3
import pytest

from sidecar.errors import IntegrityError, UnsupportedFormat
from sidecar.repo import crypto
from sidecar.repo.crypto import (
    ID_SIZE,
    KEY_FILE_VERSION,
    NONCE_SIZE,
    SEAL_OVERHEAD,
    TAG_SIZE,
    MasterKey,
    make_key_file,
    read_key_file_info,
    unwrap_key_file,
)

FAST_N = 2**10  # scrypt cost for tests; the real default is 2**15
PLAINTEXT = b"the quick brown fox jumps over the lazy dog, 0123456789"


def fixed_key(enc: int = 1, ident: int = 2) -> MasterKey:
    return MasterKey(bytes([enc]) * 32, bytes([ident]) * 32)


def key_file(master: MasterKey, passphrase: bytes = b"secret passphrase", **kw) -> bytes:
    kw.setdefault("n", FAST_N)
    return make_key_file(master, passphrase, hostname="host-1", username="alice", created="2024-05-01T10:00:00Z", **kw)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# ---- sealing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"x", PLAINTEXT, bytes(range(256)) * 300, memoryview(b"a view of some bytes")],
    ids=["empty", "one-byte", "sentence", "77KB", "memoryview"],
)
def test_seal_open_round_trip(plaintext):
    key = MasterKey.generate()
    sealed = key.seal(plaintext)
    assert len(sealed) == len(plaintext) + SEAL_OVERHEAD
    assert key.open(sealed) == bytes(plaintext)
    assert key.open(memoryview(sealed)) == bytes(plaintext)


def test_sealed_object_layout_and_confidentiality():
    key = MasterKey.generate()
    sealed = key.seal(PLAINTEXT)
    assert SEAL_OVERHEAD == NONCE_SIZE + TAG_SIZE == 28
    assert PLAINTEXT not in sealed
    assert PLAINTEXT[:16] not in sealed
    # the same plaintext sealed twice gives different objects (fresh nonce)
    assert key.seal(PLAINTEXT) != sealed


@pytest.mark.parametrize(
    "region,index",
    [
        ("nonce first byte", 0),
        ("nonce last byte", NONCE_SIZE - 1),
        ("ciphertext first byte", NONCE_SIZE),
        ("ciphertext middle byte", NONCE_SIZE + len(PLAINTEXT) // 2),
        ("ciphertext last byte", NONCE_SIZE + len(PLAINTEXT) - 1),
        ("tag first byte", -TAG_SIZE),
        ("tag last byte", -1),
    ],
)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipped_byte_is_detected(region, index, mask):
    key = MasterKey.generate()
    sealed = key.seal(PLAINTEXT)
    with pytest.raises(IntegrityError):
        key.open(flip(sealed, index, mask))


def test_every_single_byte_flip_is_detected():
    key = MasterKey.generate()
    sealed = key.seal(PLAINTEXT)
    for i in range(len(sealed)):
        with pytest.raises(IntegrityError):
            key.open(flip(sealed, i))


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda s: b"", id="empty"),
        pytest.param(lambda s: s[:1], id="one byte"),
        pytest.param(lambda s: s[:NONCE_SIZE], id="nonce only"),
        pytest.param(lambda s: s[: SEAL_OVERHEAD - 1], id="shorter than overhead"),
        pytest.param(lambda s: s[:SEAL_OVERHEAD], id="exactly overhead"),
        pytest.param(lambda s: s[:-1], id="last byte missing"),
        pytest.param(lambda s: s[:-TAG_SIZE], id="tag missing"),
        pytest.param(lambda s: s[1:], id="first byte missing"),
        pytest.param(lambda s: s + b"\x00", id="byte appended"),
    ],
)
def test_truncated_or_extended_object_is_detected(cut):
    key = MasterKey.generate()
    sealed = key.seal(PLAINTEXT)
    with pytest.raises(IntegrityError):
        key.open(cut(sealed))


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda k: MasterKey.generate(), id="unrelated key"),
        pytest.param(lambda k: MasterKey(flip(k.encryption_key, 31), k.id_key), id="one bit of encryption key"),
    ],
)
def test_open_with_another_master_key_fails(other):
    key = MasterKey.generate()
    sealed = key.seal(PLAINTEXT)
    with pytest.raises(IntegrityError):
        other(key).open(sealed)


def test_id_key_does_not_take_part_in_sealing():
    key = fixed_key(1, 2)
    same_encryption = fixed_key(1, 3)
    assert same_encryption.open(key.seal(PLAINTEXT)) == PLAINTEXT


def test_nonces_are_unique():
    key = MasterKey.generate()
    nonces = {key.seal(b"")[:NONCE_SIZE] for _ in range(20000)}
    assert len(nonces) == 20000
    assert all(len(n) == NONCE_SIZE for n in nonces)


# ---- blob ids --------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"a", PLAINTEXT, bytes(100_000)])
def test_blob_id_is_deterministic_per_key(data):
    key = fixed_key(1, 2)
    twin = fixed_key(1, 2)
    blob_id = key.blob_id(data)
    assert len(blob_id) == ID_SIZE
    assert key.blob_id(data) == blob_id
    assert twin.blob_id(data) == blob_id
    assert key.blob_id(memoryview(data)) == blob_id
    # only the id key names blobs
    assert fixed_key(9, 2).blob_id(data) == blob_id


@pytest.mark.parametrize("data", [b"", b"a", PLAINTEXT, bytes(100_000)])
def test_blob_id_differs_between_keys_and_is_not_a_plain_hash(data):
    key = fixed_key(1, 2)
    blob_id = key.blob_id(data)
    assert fixed_key(1, 3).blob_id(data) != blob_id
    assert MasterKey.generate().blob_id(data) != blob_id
    assert blob_id != blake3.blake3(data).digest()
    assert blob_id != hashlib.sha256(data).digest()
    assert blob_id != hashlib.blake2b(data, digest_size=32).digest()
    assert blob_id != blake3.blake3(data, key=key.encryption_key).digest()


def test_blob_ids_of_different_data_differ():
    key = MasterKey.generate()
    ids = {key.blob_id(i.to_bytes(4, "little")) for i in range(1000)}
    assert len(ids) == 1000


# ---- the master key object -------------------------------------------------------------


def test_repr_never_shows_key_bytes():
    key = MasterKey.generate()
    secrets_as_text = [
        key.encryption_key.hex(),
        key.id_key.hex(),
        base64.b64encode(key.encryption_key).decode(),
        base64.b64encode(key.id_key).decode(),
        repr(key.encryption_key),
        repr(key.id_key),
        repr(key.encryption_key)[2:18],  # the start of the bytes literal
    ]
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
        assert "MasterKey" in text
        for secret in secrets_as_text:
            assert secret not in text


@pytest.mark.parametrize(
    "enc,ident",
    [(b"", b"x" * 32), (b"x" * 31, b"x" * 32), (b"x" * 32, b"x" * 33), (b"x" * 64, b"")],
)
def test_master_key_parts_must_be_32_bytes(enc, ident):
    with pytest.raises(ValueError):
        MasterKey(enc, ident)


def test_generate_makes_different_keys():
    a, b = MasterKey.generate(), MasterKey.generate()
    assert a.encryption_key != b.encryption_key
    assert a.id_key != b.id_key
    assert a.encryption_key != a.id_key


def test_export_round_trip():
    key = MasterKey.generate()
    exported = key.export()
    assert set(exported) == {"encryption", "id"}
    back = MasterKey.from_export(json.loads(json.dumps(exported)))
    assert back.encryption_key == key.encryption_key
    assert back.id_key == key.id_key


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"encryption": base64.b64encode(b"x" * 32).decode()},
        {"encryption": "not base64!", "id": base64.b64encode(b"x" * 32).decode()},
        {"encryption": base64.b64encode(b"x" * 16).decode(), "id": base64.b64encode(b"x" * 32).decode()},
        pytest.param(
            {"encryption": 5, "id": 6},
            id="fields not strings",
        ),
    ],
)
def test_from_export_rejects_damaged_exports(doc):
    with pytest.raises(UnsupportedFormat):
        MasterKey.from_export(doc)


def test_chunker_seed_is_positive_bounded_and_stable():
    key = fixed_key(1, 2)
    seed = key.chunker_seed()
    assert isinstance(seed, int)
    assert 0 < seed < 2**62
    assert key.chunker_seed() == seed
    assert fixed_key(1, 2).chunker_seed() == seed
    assert fixed_key(7, 2).chunker_seed() == seed  # depends on the id key only
    assert fixed_key(1, 3).chunker_seed() != seed
    # pinned: the seed decides chunk boundaries, so it must never change between versions
    digest = blake3.blake3(b"websoft9-backup chunker seed v1", key=key.id_key).digest()
    assert seed == int.from_bytes(digest[:8], "little") & (2**62 - 1)


def test_chunker_seeds_of_random_keys_are_in_range_and_distinct():
    seeds = [MasterKey.generate().chunker_seed() for _ in range(200)]
    assert all(0 < s < 2**62 for s in seeds)
    assert len(set(seeds)) == 200


# ---- key files -------------------------------------------------------------------------


def test_key_file_round_trip():
    master = MasterKey.generate()
    raw = key_file(master, b"correct horse battery staple")
    opened = unwrap_key_file(raw, b"correct horse battery staple")
    assert opened is not None
    assert opened.encryption_key == master.encryption_key
    assert opened.id_key == master.id_key


def test_key_file_public_fields_and_no_secret_in_clear():
    master = MasterKey.generate()
    passphrase = b"a rather distinctive passphrase"
    raw = key_file(master, passphrase)
    doc = json.loads(raw)
    assert doc["version"] == KEY_FILE_VERSION
    assert doc["kdf"] == "scrypt"
    assert (doc["n"], doc["r"], doc["p"]) == (FAST_N, crypto.SCRYPT_R, crypto.SCRYPT_P)
    assert (doc["hostname"], doc["username"], doc["created"]) == ("host-1", "alice", "2024-05-01T10:00:00Z")
    assert len(base64.b64decode(doc["salt"])) == 32
    info = read_key_file_info(raw)
    assert info["hostname"] == "host-1"
    text = raw.decode()
    for secret in (master.encryption_key, master.id_key):
        assert base64.b64encode(secret).decode() not in text
        assert secret.hex() not in text
    assert passphrase not in raw
    assert base64.b64encode(passphrase) not in raw


def test_key_file_default_scrypt_cost_is_recorded():
    master = MasterKey.generate()
    # n is stored per file, so a file made with the default cost says so
    doc = json.loads(key_file(master, b"pw", n=crypto.SCRYPT_N))
    assert doc["n"] == crypto.SCRYPT_N == 2**15


def test_two_key_files_for_one_master_differ():
    master = MasterKey.generate()
    a, b = json.loads(key_file(master, b"pw")), json.loads(key_file(master, b"pw"))
    assert a["salt"] != b["salt"]
    assert a["data"] != b["data"]


@pytest.mark.parametrize(
    "wrong",
    [b"secret passphrasE", b"secret passphrase ", b"", b"secret", b"\x00"],
    ids=["case", "trailing space", "empty", "prefix", "nul"],
)
def test_wrong_passphrase_gives_none(wrong):
    raw = key_file(MasterKey.generate(), b"secret passphrase")
    assert unwrap_key_file(raw, wrong) is None


def test_each_key_file_opens_only_with_its_own_passphrase():
    master = MasterKey.generate()
    one, two = key_file(master, b"one"), key_file(master, b"two")
    assert unwrap_key_file(one, b"one").id_key == master.id_key
    assert unwrap_key_file(two, b"two").id_key == master.id_key
    assert unwrap_key_file(one, b"two") is None
    assert unwrap_key_file(two, b"one") is None


def test_empty_passphrase_is_refused():
    with pytest.raises(ValueError, match="empty"):
        key_file(MasterKey.generate(), b"")


def _edit(raw: bytes, **changes) -> bytes:
    doc = json.loads(raw)
    for k, v in changes.items():
        if v is KeyError:
            del doc[k]
        else:
            doc[k] = v
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: b"", id="empty file"),
        pytest.param(lambda raw: b"not json at all", id="not json"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated json"),
        pytest.param(lambda raw: b"\xff\xfe" + raw, id="not utf-8"),
        pytest.param(lambda raw: b"[1, 2, 3]", id="a list"),
        pytest.param(lambda raw: b"null", id="null"),
        pytest.param(lambda raw: b"{}", id="empty object"),
        pytest.param(lambda raw: _edit(raw, kdf="argon2id"), id="unknown kdf"),
        pytest.param(lambda raw: _edit(raw, kdf=KeyError), id="missing kdf"),
        pytest.param(lambda raw: _edit(raw, n=KeyError), id="missing n"),
        pytest.param(lambda raw: _edit(raw, r=KeyError), id="missing r"),
        pytest.param(lambda raw: _edit(raw, p=KeyError), id="missing p"),
        pytest.param(lambda raw: _edit(raw, salt=KeyError), id="missing salt"),
        pytest.param(lambda raw: _edit(raw, data=KeyError), id="missing data"),
        pytest.param(lambda raw: _edit(raw, version="one"), id="version not a number"),
        pytest.param(lambda raw: _edit(raw, version=None), id="version null"),
    ],
)
def test_damaged_key_file_is_unsupported_format(damage):
    raw = damage(key_file(MasterKey.generate(), b"pw"))
    with pytest.raises(UnsupportedFormat):
        read_key_file_info(raw)
    with pytest.raises(UnsupportedFormat):
        unwrap_key_file(raw, b"pw")


@pytest.mark.parametrize("version", [KEY_FILE_VERSION + 1, 99])
def test_newer_key_file_version_is_unsupported(version):
    raw = _edit(key_file(MasterKey.generate(), b"pw"), version=version)
    with pytest.raises(UnsupportedFormat, match="newer"):
        read_key_file_info(raw)
    with pytest.raises(UnsupportedFormat, match="newer"):
        unwrap_key_file(raw, b"pw")


def test_missing_version_is_read_as_the_first_version():
    master = MasterKey.generate()
    raw = _edit(key_file(master, b"pw"), version=KeyError)
    assert unwrap_key_file(raw, b"pw").id_key == master.id_key


def test_changed_wrapped_data_does_not_open():
    raw = key_file(MasterKey.generate(), b"pw")
    data = base64.b64decode(json.loads(raw)["data"])
    damaged = _edit(raw, data=base64.b64encode(flip(data, len(data) - 1)).decode())
    assert unwrap_key_file(damaged, b"pw") is None


def test_changed_salt_does_not_open():
    raw = key_file(MasterKey.generate(), b"pw")
    other_salt = base64.b64encode(bytes(32)).decode()
    assert unwrap_key_file(_edit(raw, salt=other_salt), b"pw") is None


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"salt": "***not base64***"}, id="salt not base64"),
        pytest.param({"data": "***not base64***"}, id="data not base64"),
        pytest.param({"data": ""}, id="data empty"),
        pytest.param({"n": 1000}, id="n not a power of two"),
    ],
)
def test_damaged_key_file_fields_are_unsupported_format(changes):
    raw = _edit(key_file(MasterKey.generate(), b"pw"), **changes)
    with pytest.raises(UnsupportedFormat):
        unwrap_key_file(raw, b"pw")
