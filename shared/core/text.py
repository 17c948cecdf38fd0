"""Which client text we can store and key on, decided in one place.

PostgreSQL's UTF-8 `text` refuses NUL; a lone surrogate (JSON's `\\uD800`) cannot be
encoded to UTF-8 at all, so SQLite's driver, Redis and our JSON encoders fail on it;
Unicode's non-characters are "permanently reserved for internal use" and have no
business in a request. Anything else is text: control characters in free text are
normalized where it is used (shared/tryons/hairstyles.compose_prompt).
"""

from __future__ import annotations

import re

# The non-characters of the BMP: U+FDD0..U+FDEF, U+FFFE (a byte-swapped BOM) and
# U+FFFF (a sentinel). The 32 in the other planes are left alone: UTF-8 and
# PostgreSQL carry them, and the document's pattern language, as the fuzzers and
# generated clients read it, cannot name them, so refusing them would break the
# contract for nothing.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
# The same rule as a JSON-Schema pattern, for the OpenAPI document (api/schemas.text).
# Lone surrogates are left out of it: ECMA-262 and Rust's regex engines cannot name
# them (a fuzzer then ignores the whole pattern), and JSON Schema strings are
# sequences of code points, which a lone surrogate is not; docs/api.md states them.
STORABLE_PATTERN = "^[^\\u0000\\ufdd0-\\ufdef\\ufffe\\uffff]*$"


def unstorable(value: str) -> str | None:
    """The class of the first code point we refuse in `value` ("NUL", "surrogate",
    "noncharacter"), or None when all of it can be stored. Never the value itself:
    the class is what a log line or an error may name."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "NUL"
    if "\ud800" <= char <= "\udfff":
        return "surrogate"
    return "noncharacter"


def refusal_message(text_class: str) -> str:
    """The field message of a refusal (field errors name classes, never values)."""
    return f"Text containing a {text_class} code point cannot be stored."
