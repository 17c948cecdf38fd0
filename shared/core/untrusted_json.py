"""The one way a JSON document from outside is parsed: with limits.

`json.loads` accepts documents that are valid JSON yet break whatever handles them
next: nesting deep enough to exhaust the interpreter's stack (a RecursionError in
the parser, then again in anything that walks the result), integers past the
4,300 digits Python converts, `1e999` (infinity), the `NaN`/`Infinity` literals
JSON does not have, a key given twice (which one counts?), and strings the
database cannot store (shared/core/text.py). `parse` refuses all of them with
`UnsafeJson`, naming the field and the class, never the value.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shared.core.text import refusal_message, unstorable

# Our request bodies nest 3 deep and carry a dozen members; fal's webhook payloads a
# little more. These bounds leave room for growth and none for abuse.
MAX_DEPTH = 32
MAX_MEMBERS = 2_000  # values in the whole document, containers included
MAX_STRING_CHARS = 16_384
MAX_KEY_CHARS = 256
# What every converter and column we have can hold (BIGINT; marshmallow's Integer).
MAX_INT = 2**63 - 1
MAX_INT_DIGITS = 19


class UnsafeJson(ValueError):
    """A document refused. `field` is a dotted path (`_schema` for the whole
    document); `message` says what class of thing was refused."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MalformedJson(UnsafeJson):
    """Not JSON at all (or not UTF-8): a malformed request rather than a refused one."""


def _refuse_constant(name: str) -> Any:
    raise UnsafeJson("_schema", f"{name} is not a JSON number.")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS or abs(value := int(text)) > MAX_INT:
        raise UnsafeJson("_schema", "An integer is out of range.")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnsafeJson("_schema", "A number is out of range.")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise UnsafeJson("_schema", "A key is given twice.")
    return obj


def parse(raw: bytes | str) -> Any:
    """The document; MalformedJson for what is not JSON, UnsafeJson for JSON that
    breaks a limit."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise MalformedJson("_schema", "The body is not UTF-8.") from None
    try:
        document = json.loads(text, parse_int=_integer, parse_float=_float,
                               parse_constant=_refuse_constant, object_pairs_hook=_object)
    except RecursionError:
        raise UnsafeJson("_schema", "The document is nested too deeply.") from None
    except json.JSONDecodeError:
        raise MalformedJson("_schema", "The body is not valid JSON.") from None
    _check_tree(document)
    return document


def _check_tree(document: Any) -> None:
    """Depth, size and text of every member, without recursion (the document may be
    as deep as the parser's own limit)."""
    pending: list[tuple[Any, str, int]] = [(document, "", 0)]
    members = 0
    while pending:
        value, path, depth = pending.pop()
        members += 1
        if members > MAX_MEMBERS:
            raise UnsafeJson("_schema", "The document has too many members.")
        if isinstance(value, str):
            _check_text(value, path or "_schema", MAX_STRING_CHARS)
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise UnsafeJson("_schema", "The document is nested too deeply.")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, path or "_schema", MAX_KEY_CHARS)
                pending.append((item, f"{path}.{key}" if path else str(key), depth + 1))


def _check_text(value: str, field: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise UnsafeJson(field, "The text is too long.")
    if text_class := unstorable(value):
        raise UnsafeJson(field, refusal_message(text_class))
