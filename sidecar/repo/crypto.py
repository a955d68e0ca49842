"""Master key, passphrase-wrapped key files, AEAD sealing and keyed blob ids.

The master key is 64 random bytes made at `init`: 32 for AES-256-GCM, 32 for the
keyed BLAKE3 that names blobs (so a blob id never reveals a plain hash of its
content). Each key file wraps the master key under one passphrase with scrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.errors import IntegrityError, UnsupportedFormat

NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
ID_SIZE = 32

# scrypt cost: ~0.1 s and 32 MiB per unlock on a small server; stored per key
# file so it can be raised later without breaking old keys.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
KEY_FILE_VERSION = 1


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The secret of a repository. `repr` never shows the bytes."""

    encryption_key: bytes
    id_key: bytes

    def __post_init__(self) -> None:
        if len(self.encryption_key) != 32 or len(self.id_key) != 32:
            raise ValueError("master key parts must be 32 bytes each")
        object.__setattr__(self, "_aead", AESGCM(self.encryption_key))

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(32), os.urandom(32))

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """Keyed BLAKE3 of the plaintext: the blob's name in the repository."""
        return blake3.blake3(data, key=self.id_key).digest()

    def seal(self, plaintext: bytes | memoryview, aad: bytes = b"") -> bytes:
        """AES-256-GCM with a fresh random 96-bit nonce: nonce || ciphertext || tag."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad or None)  # type: ignore[attr-defined]

    def open(self, sealed: bytes | memoryview, aad: bytes = b"") -> bytes:
        """Authenticate and decrypt what `seal` made; `IntegrityError` if tampered."""
        if len(sealed) < SEAL_OVERHEAD:
            raise IntegrityError("sealed object is too short")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(bytes(view[:NONCE_SIZE]), view[NONCE_SIZE:], aad or None)  # type: ignore[attr-defined]
        except InvalidTag:
            raise IntegrityError("authentication tag mismatch: data is damaged or was changed") from None

    def seal_framed(self, flag: int, body: bytes | memoryview) -> bytearray:
        """flag || nonce || ciphertext || tag, the flag byte authenticated as associated
        data; written into one buffer (no intermediate copies of the data)."""
        out = bytearray(1 + NONCE_SIZE + len(body) + TAG_SIZE)
        out[0] = flag
        nonce = os.urandom(NONCE_SIZE)
        out[1 : 1 + NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, body, out[:1], memoryview(out)[1 + NONCE_SIZE :])  # type: ignore[attr-defined]
        return out

    def open_framed(self, sealed: bytes | memoryview) -> tuple[int, bytes]:
        """(flag, plaintext) of what `seal_framed` made; `IntegrityError` if tampered."""
        if len(sealed) < 1 + SEAL_OVERHEAD:
            raise IntegrityError("sealed object is too short")
        view = memoryview(sealed)
        return view[0], self.open(view[1:], aad=bytes(view[:1]))

    def chunker_seed(self) -> int:
        """A secret 64-bit seed for the chunker's gear table, derived from the id key,
        so chunk boundaries do not reveal file contents to someone who sees sizes."""
        digest = blake3.blake3(b"websoft9-backup chunker seed v1", key=self.id_key).digest()
        return (int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)) or 1

    def export(self) -> dict[str, str]:
        return {"encryption": b64(self.encryption_key), "id": b64(self.id_key)}

    @classmethod
    def from_export(cls, data: dict[str, str]) -> MasterKey:
        try:
            return cls(unb64(data["encryption"]), unb64(data["id"]))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise UnsupportedFormat(f"not a master key export: {exc.__class__.__name__}") from None


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def make_key_file(
    master: MasterKey,
    passphrase: bytes,
    *,
    hostname: str,
    username: str,
    created: str,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> bytes:
    """The JSON bytes of a key file that unlocks `master` with `passphrase`."""
    if not passphrase:
        raise ValueError("the passphrase must not be empty")
    salt = os.urandom(32)
    wrapping = AESGCM(_derive(passphrase, salt, n, r, p))
    nonce = os.urandom(NONCE_SIZE)
    secret = json.dumps(master.export()).encode()
    doc = {
        "version": KEY_FILE_VERSION,
        "kdf": "scrypt",
        "n": n,
        "r": r,
        "p": p,
        "salt": b64(salt),
        "created": created,
        "hostname": hostname,
        "username": username,
        "data": b64(nonce + wrapping.encrypt(nonce, secret, b"websoft9-backup key")),
    }
    return json.dumps(doc, indent=1).encode()


def read_key_file_info(raw: bytes) -> dict:
    """The fields of a key file, validated (salt and data decoded into `_salt`, `_data`)."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("kdf") != "scrypt":
            raise ValueError("unknown kdf")
        if int(doc.get("version", 0)) > KEY_FILE_VERSION:
            raise UnsupportedFormat(f"key file version {doc['version']} is newer than this program supports")
        for field in ("n", "r", "p"):
            value = doc.get(field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive whole number")
        if doc["n"] < 2 or doc["n"] & (doc["n"] - 1):
            raise ValueError("n must be a power of 2")
        doc["_salt"] = unb64(doc["salt"])
        doc["_data"] = unb64(doc["data"])
        if len(doc["_data"]) < SEAL_OVERHEAD:
            raise ValueError("data is too short")
        return doc
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        raise UnsupportedFormat(f"damaged key file: {exc}") from None


def unwrap_key_file(raw: bytes, passphrase: bytes) -> MasterKey | None:
    """The master key if `passphrase` opens this key file, else None."""
    doc = read_key_file_info(raw)
    try:
        key = _derive(passphrase, doc["_salt"], doc["n"], doc["r"], doc["p"])
    except (ValueError, MemoryError) as exc:
        raise UnsupportedFormat(f"damaged key file: unusable scrypt parameters ({exc})") from None
    data = doc["_data"]
    try:
        secret = AESGCM(key).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], b"websoft9-backup key")
    except InvalidTag:
        return None
    try:
        return MasterKey.from_export(json.loads(secret))
    except ValueError as exc:
        raise UnsupportedFormat(f"damaged key file: {exc}") from None
