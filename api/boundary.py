"""Where client input enters: every JSON body, query string and keyed header is
checked here, once, before a view or a schema sees it.

- JSON bodies go through shared/core/untrusted_json.py (depth, size, numbers,
  duplicate keys, unstorable text) via the arguments parser every blueprint uses;
  the fal webhook parses its body with the same function, after its signatures.
- Query values and the `Idempotency-Key` header go through shared/core/text.py.
- The body's `locale` is remembered from that one parse (`body_locale`), so that
  the error handler never reads the body again.

A refusal is 422 `request.invalid` naming the field and the class (400 for a body
that is not JSON at all), logged without the value.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import flask_smorest
from flask import g, request
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request

from shared.access.idempotency import MAX_KEY_LENGTH
from shared.core.errors import AppError
from shared.core.text import refusal_message, unstorable
from shared.core.untrusted_json import MalformedJson, UnsafeJson, parse

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"


def refuse(location: str, field: str, message: str) -> AppError:
    log.info("request refused: %s.%s (%s)", location, field, message)
    return AppError("request.invalid", detail=f"{location}.{field}",
                    fields={location: {field: [message]}})


def refuse_json(exc: UnsafeJson) -> NoReturn:
    """400 for a body that is not JSON at all, else 422 naming the field."""
    if isinstance(exc, MalformedJson):
        log.info("request refused: json.%s (%s)", exc.field, exc.message)
        abort(400, messages={"json": {exc.field: [exc.message]}})
    raise refuse("json", exc.field, exc.message) from None


def json_body(raw: bytes) -> Any:
    """The parsed body, or a refusal. Remembers a string `locale` member."""
    try:
        document = parse(raw)
    except UnsafeJson as exc:
        refuse_json(exc)
    if isinstance(document, dict) and isinstance(document.get("locale"), str):
        g.body_locale = document["locale"]
    return document


class BoundedParser(FlaskParser):
    """webargs' parser with our JSON parse in place of `json.loads`."""

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req):
            return core.missing
        raw = req.get_data(cache=True)
        if not raw:
            return core.missing  # no body: the schema's required fields answer
        return json_body(raw)


class Blueprint(flask_smorest.Blueprint):
    """Every API blueprint: arguments are parsed by the bounded parser."""

    ARGUMENTS_PARSER = BoundedParser()


def check_query() -> None:
    """Every query name and value (the cursor, a status, a locale…) is text we look
    up or compare in the database: the same refusal as in a body."""
    for name, value in request.args.items(multi=True):
        if text_class := unstorable(name):
            raise refuse("query", "_query", refusal_message(text_class))
        if text_class := unstorable(value):
            raise refuse("query", name, refusal_message(text_class))


def idempotency_key() -> str | None:
    """The `Idempotency-Key` header: at most MAX_KEY_LENGTH visible ASCII characters.
    Refused, never truncated: two long keys with one prefix must not collide."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None or key == "":
        return None
    if len(key) > MAX_KEY_LENGTH:
        raise refuse("headers", IDEMPOTENCY_HEADER,
                     f"Longer than {MAX_KEY_LENGTH} characters.")
    if not key.isascii() or not key.isprintable():
        raise refuse("headers", IDEMPOTENCY_HEADER, "Only visible ASCII characters.")
    return key
