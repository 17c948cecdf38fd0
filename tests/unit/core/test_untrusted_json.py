"""The one JSON parse for client documents: every syntactically valid document that
breaks what handles it next is refused with UnsafeJson, naming the field and the
class, never the value; anything within the limits parses as json.loads would."""

from __future__ import annotations

import json

import pytest

from shared.core.text import unstorable
from shared.core.untrusted_json import (
    MAX_DEPTH,
    MAX_MEMBERS,
    MalformedJson,
    UnsafeJson,
    parse,
)


def refusal(raw: bytes | str) -> UnsafeJson:
    with pytest.raises(UnsafeJson) as error:
        parse(raw)
    return error.value


@pytest.mark.parametrize("raw", [
    b'{"contentType": "image/jpeg", "contentLength": 482133, "checksum": null}',
    b'{"a": [1, 2.5, -3e10, true, false, null, {"b": "caf\\u00e9 \\ud83d\\ude00"}]}',
    b'[]', b'"text"', b'0', ("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode(),
    json.dumps({"n": 2**63 - 1, "m": -(2**63 - 1)}).encode(),
    json.dumps({"tab": "a\tb", "bell": "\x07"}).encode(),  # other controls are text
])
def test_documents_within_the_limits_parse_as_json_loads_would(raw):
    assert parse(raw) == json.loads(raw)


@pytest.mark.parametrize(("raw", "field"), [
    ("[" * 3000 + "]" * 3000, "_schema"),  # the finding: RecursionError in two places
    ("[" * 100_000, "_schema"),
    ('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), "_schema"),
    ("[" + ",".join(["1"] * (MAX_MEMBERS + 1)) + "]", "_schema"),
    ('{"x": NaN}', "_schema"), ('{"x": Infinity}', "_schema"), ('{"x": -Infinity}', "_schema"),
    ('{"x": 1e999}', "_schema"), ('{"x": -1e999}', "_schema"),
    ('{"x": ' + "9" * 5000 + "}", "_schema"),  # int() refuses it with a ValueError
    ('{"x": 9223372036854775808}', "_schema"),  # past BIGINT
    ('{"a": 1, "a": 2}', "_schema"),
    ('{"prompt": "with\\u0000 bangs"}', "prompt"),
    ('{"prompt": "lone \\ud800"}', "prompt"),
    ('{"prompt": "lone \\udfff low"}', "prompt"),
    ('{"prompt": "\\ufffe"}', "prompt"), ('{"prompt": "\\ufdd0"}', "prompt"),
    ('{"metadata": {"note": "x\\u0000"}}', "metadata.note"),
    ('{"list": ["ok", "\\ud800"]}', "list.1"),
    ('{"k\\u0000ey": 1}', "_schema"),
    ('{"prompt": "' + "x" * 20_000 + '"}', "prompt"),
])
def test_what_breaks_a_limit_is_refused_naming_the_field(raw, field):
    error = refusal(raw)
    assert not isinstance(error, MalformedJson)
    assert error.field == field
    assert "\x00" not in error.message and "xxxx" not in error.message  # never the value


@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe{}", b'{"a": ', b"", b"{'a': 1}"])
def test_what_is_not_json_is_malformed(raw):
    assert isinstance(refusal(raw), MalformedJson)


@pytest.mark.parametrize(("text", "expected"), [
    ("plain", None), ("café ☕ 😀", None), ("\t\n\x07", None), ("\ufffd", None),
    ("a\x00b", "NUL"), ("\ud800", "surrogate"), ("\udc00x", "surrogate"),
    ("\ufdd0", "noncharacter"), ("\ufdef", "noncharacter"), ("\uffff", "noncharacter"),
    ("\ufdd5", "noncharacter"),
    ("\U0001fffe", None), ("\U0010ffff", None),  # astral non-characters: storable
])
def test_unstorable_text_is_named_by_class(text, expected):
    assert unstorable(text) == expected
