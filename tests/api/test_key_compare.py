"""The API key is compared in constant time: every /api/* request with a key goes through
`hmac.compare_digest` with the whole expected key, never a comparison that stops at the
first differing byte (which leaks, byte by byte, how much of a guess is right)."""

from __future__ import annotations

import hmac

import pytest

from sidecar.api import PREFIX, create_app
from tests.api.conftest import API_KEY


def test_the_key_is_compared_with_compare_digest(env, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("sidecar.api.hmac.compare_digest", spy)
    client = create_app(env.ops, API_KEY).test_client()
    guesses = [API_KEY, API_KEY[:-1] + "x", API_KEY[:5], API_KEY + "extra", "ü" * 40]
    for guess in guesses:
        status = client.get(f"{PREFIX}/snapshots", headers={"X-API-Key": guess}).status_code
        assert status == (200 if guess == API_KEY else 401), guess
    assert [given for given, _ in calls] == [g.encode() for g in guesses]
    assert all(expected == API_KEY.encode() for _, expected in calls)


def test_no_early_exit_on_length_or_prefix(env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong key of any length and any common prefix reaches the constant-time compare
    (nothing checks the length or a prefix first)."""
    reached: list[bytes] = []
    monkeypatch.setattr("sidecar.api.hmac.compare_digest", lambda a, b: reached.append(a) or False)
    client = create_app(env.ops, API_KEY).test_client()
    for guess in ("x", API_KEY[:10], API_KEY[:-1], API_KEY * 2):
        assert client.get(f"{PREFIX}/apps", headers={"X-API-Key": guess}).status_code == 401
    assert len(reached) == 4
