"""Reading request bodies and query strings: every mistake is an `InvalidRequest`
naming the field, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flask import Request

from sidecar.errors import InvalidRequest

MAX_DEPTH = 64  # of a request body's arrays and objects; the API's own bodies have 3


def json_depth(doc: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON document (a scalar: 0); stops
    counting past MAX_DEPTH. Iterative, so it cannot itself run out of stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            return level
        stack.extend((child, level + 1) for child in children)
    return deepest


class Body:
    """A JSON object body; `done()` refuses fields nobody asked for."""

    def __init__(self, request: Request) -> None:
        raw = request.get_data(cache=True)
        if not raw:
            self.doc: dict[str, Any] = {}
        else:
            try:  # any content type: the body is JSON or it is refused
                doc = json.loads(raw)
            except RecursionError:  # nested deeper than the parser goes (which depends on the thread's stack)
                raise InvalidRequest(f"body: nested deeper than {MAX_DEPTH} levels") from None
            except ValueError:
                raise InvalidRequest("body: not valid JSON") from None
            if json_depth(doc) > MAX_DEPTH:  # the same answer whatever the stack a request thread has
                raise InvalidRequest(f"body: nested deeper than {MAX_DEPTH} levels")
            if not isinstance(doc, dict):
                raise InvalidRequest(f"body: must be a JSON object, got {_json_type(doc)}")
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
            raise InvalidRequest(f"{name}: must be true or false, got {_shown(value)}")
        return value

    def string(self, name: str, default: str | None = None, max_length: int = 1000) -> str | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidRequest(f"{name}: must be a string, got {_json_type(value)}")
        if len(value) > max_length:
            raise InvalidRequest(f"{name}: longer than {max_length} characters")
        _check_text(name, value)
        return value

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str | None:
        options = tuple(choices)
        value = self.string(name, default)
        if value is not None and value not in options:
            raise InvalidRequest(f"{name}: must be one of {', '.join(options)}, got {_shown(value)}")
        return value

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidRequest(f"{name}: must be a whole number from {low} to {high}, got {_shown(value)}")
        return value

    def strings(self, name: str) -> list[str] | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InvalidRequest(f"{name}: must be a list of non-empty strings")
        for item in value:
            _check_text(name, item)
        return value

    def done(self) -> None:
        unknown = sorted(set(self.doc) - self._seen)
        if unknown:
            raise InvalidRequest(
                f"{unknown[0]}: unknown field; expected {', '.join(sorted(self._seen)) or 'an empty body'}"
            )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _shown(value: object, limit: int = 80) -> str:
    """A value for a message: as the client sent it, cut short (a body may be a megabyte)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_text(name: str, value: str) -> None:
    """Text the catalog can store: no NUL (PostgreSQL refuses it), no lone surrogate (not UTF-8)."""
    if "\x00" in value:
        raise InvalidRequest(f"{name}: must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        surrogate = ord(value[exc.start])
        raise InvalidRequest(f"{name}: not valid Unicode (unpaired surrogate U+{surrogate:04X})") from None


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
