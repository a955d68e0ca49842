"""Reading request bodies and query strings: every mistake is an `InvalidRequest`
naming the field, never a 500."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Request

from sidecar.errors import InvalidRequest


class Body:
    """A JSON object body; `done()` refuses fields nobody asked for."""

    def __init__(self, request: Request) -> None:
        if not request.get_data(cache=True):
            self.doc: dict[str, Any] = {}
        else:
            doc = request.get_json(force=True, silent=True)
            if doc is None:
                raise InvalidRequest("body: not valid JSON")
            if not isinstance(doc, dict):
                raise InvalidRequest(f"body: must be a JSON object, got {type(doc).__name__}")
            self.doc = doc
        self._seen: set[str] = set()

    def _get(self, name: str) -> Any:
        self._seen.add(name)
        return self.doc.get(name)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidRequest(f"{name}: must be true or false, got {value!r}")
        return value

    def string(self, name: str, default: str | None = None, max_length: int = 1000) -> str | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidRequest(f"{name}: must be a string, got {type(value).__name__}")
        if len(value) > max_length:
            raise InvalidRequest(f"{name}: longer than {max_length} characters")
        return value

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str | None:
        options = tuple(choices)
        value = self.string(name, default)
        if value is not None and value not in options:
            raise InvalidRequest(f"{name}: must be one of {', '.join(options)}, got {value!r}")
        return value

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidRequest(f"{name}: must be a whole number from {low} to {high}, got {value!r}")
        return value

    def strings(self, name: str) -> list[str] | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InvalidRequest(f"{name}: must be a list of non-empty strings")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.doc) - self._seen)
        if unknown:
            raise InvalidRequest(
                f"{unknown[0]}: unknown field; expected {', '.join(sorted(self._seen)) or 'an empty body'}"
            )


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name}: must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name}: must be from {low} to {high}, got {value}")
    return value


def query_flag(request: Request, name: str) -> bool:
    text = request.args.get(name, "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise InvalidRequest(f"{name}: must be true or false, got {text!r}")
