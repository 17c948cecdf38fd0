"""Which client text we can store and key on, decided in one place.

PostgreSQL's UTF-8 `text` refuses NUL; a lone surrogate (JSON's `\\uD800`) cannot be
encoded to UTF-8 at all, so SQLite's driver, Redis and our JSON encoders fail on it;
Unicode's non-characters are "permanently reserved for internal use" and have no
business in a request. Anything else is text: control characters in free text are
normalized where it is used (shared/tryons/hairstyles.compose_prompt).
"""

from __future__ import annotations

import re

# Non-characters: U+FDD0..U+FDEF, and the last two code points of every plane.
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}" for plane in range(17))
_UNSTORABLE = re.compile(f"[\x00\ud800-\udfff{_NONCHARACTERS}]")


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
