"""The request boundary, property-based (hypothesis): whatever a client sends, in
process to every operation of the served document and to the routes outside it
(`/healthz`, `/readyz`, `/metrics`, an unknown path, a wrong method), with and
without a valid credential (a bearer token; for the fal webhook our job token and
fal's signature over the exact bytes), on PostgreSQL and on SQLite:

- arbitrary JSON bytes (deep, wide, duplicate keys, numbers Python cannot convert,
  `NaN`/`Infinity`, strings of every Unicode category, invalid UTF-8, other
  encodings) never get a 5xx, and every answer >= 400 is our JSON envelope;
- the strings the server must refuse (NUL, lone surrogates as `\\uD800` escapes,
  non-characters) forced into every string field of each request body, into each
  query parameter, path parameter and `Idempotency-Key`, one at a time, starting from
  the documented example: refused (422 `request.invalid` naming the field where the
  operation takes a bearer token), never a 5xx;
- a refusal costs no daily quota: after every refused presign and try-on the user can
  still make exactly the day's number of each.

Derandomized with a bounded number of examples per operation (a failure is a
regression, not a new draw); `BOUNDARY_EXPLORE=1` draws new, and more, examples each
run (for hunting, not for CI)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from api.app import create_app
from shared.access.quota import QuotaService
from shared.core.errors import ERROR_KINDS
from shared.services import Services
from tests.integration.test_upload_flow import ASTRONAUT, sha256_b64, upload_ready
from worker.base import use_services

# Its own CI step (.ci/run, `-m fuzz`): generated inputs take their time.
pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT: dict[str, Any] = json.loads((ROOT / "docs" / "openapi.json").read_text())
EXPLORE = bool(os.environ.get("BOUNDARY_EXPLORE"))
EXAMPLES_PER_OPERATION = 300 if EXPLORE else 12
DAILY = 3  # the daily presign and try-on quota of every user here
WEBHOOK = "/v1/webhooks/fal"
METHODS = ("get", "put", "post", "delete", "patch")
# Routes outside the document (and requests no route takes) get the same bodies: the
# error handler answers them too.
OUTSIDE_THE_DOCUMENT = (("POST", "/healthz"), ("GET", "/healthz"), ("POST", "/readyz"),
                        ("POST", "/metrics"), ("POST", "/openapi.json"), ("POST", "/docs"),
                        ("PATCH", "/v1/try-ons"), ("POST", "/v1/no-such-route"))
# What the server must refuse in any string: NUL, both halves of a surrogate pair on
# their own, and non-characters (the first of each kind and the last of the BMP).
REFUSED = ("\x00", "\ud800", "\udfff", "\ufffe", "\uffff", "\ufdd0")
SURROGATES = ("\ud800", "\udfff")
ENVELOPE_FIELDS = {"code", "messageKey", "message", "retriable", "correlationId"}

# In CI a failure is reported as drawn (the same draw on every run, so it reproduces);
# shrinking a 3,000-level document takes about a minute per failing test. Exploring
# shrinks, to hand over the smallest example.
common_settings = settings(
    max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=not EXPLORE,
    database=settings.default.database if EXPLORE else None,
    phases=list(Phase) if EXPLORE else [Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck))


# --- the operations --------------------------------------------------------------

def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    parameters: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def bearer(self) -> bool:
        documented = bool(self.spec.get("security", DOCUMENT.get("security")))
        return documented and self.path.startswith("/v1/")

    @property
    def webhook(self) -> bool:
        return self.path == WEBHOOK

    def body_schema(self) -> dict[str, Any] | None:
        content = self.spec.get("requestBody", {}).get("content", {})
        media = content.get("application/json")
        return resolve(media["schema"]) if media else None

    def example_body(self) -> dict[str, Any]:
        schema = self.body_schema()
        return dict(schema.get("example", {})) if schema else {}

    def params(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.parameters if p["in"] == where]


def documented_operations(document: dict[str, Any]) -> list[Operation]:
    operations = []
    for path, item in document["paths"].items():
        shared = [resolve(p) for p in item.get("parameters", [])]
        for method in METHODS:
            if method in item:
                spec = item[method]
                own = [resolve(p) for p in spec.get("parameters", [])]
                operations.append(Operation(method.upper(), path, spec, tuple(shared + own)))
    return operations


DOCUMENTED = documented_operations(DOCUMENT)
OPERATIONS = DOCUMENTED + [Operation(m, p) for m, p in OUTSIDE_THE_DOCUMENT]
WITH_BODY = [op for op in DOCUMENTED if op.body_schema()]
WITH_QUERY = [op for op in DOCUMENTED if op.params("query")]
WITH_PATH = [op for op in DOCUMENTED if "{" in op.path]


def string_fields(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the string members of a body schema (nested objects and oneOf too)."""
    found: list[tuple[str, ...]] = []
    members = [schema] + [resolve(m) for m in schema.get("oneOf", []) + schema.get("allOf", [])]
    for member in members:
        for name, prop in member.get("properties", {}).items():
            prop = resolve(prop)
            if prop.get("type") == "string":
                found.append((*prefix, name))
            elif prop.get("properties"):
                found.extend(string_fields(prop, (*prefix, name)))
    return list(dict.fromkeys(found))


# --- the system -----------------------------------------------------------------

@dataclass
class Boundary:
    client: Any
    token: Callable[[str], str]
    webhook_secret: str
    sign: Callable[[str, bytes], dict[str, str]]

    def user(self) -> str:
        return f"boundary-{uuid.uuid4().hex[:12]}"

    def bearer(self, user: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user or self.user())}"}

    def send(self, operation: Operation, body: bytes | None, *, credentials: bool,
             query: str = "", headers: dict[str, str] | None = None,
             content_type: str = "application/json", path: str | None = None) -> Any:
        """One request as the WSGI server hands it over; an exception out of the app
        is a failure (gunicorn would answer it with its own HTML 500)."""
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Type", content_type)
        query_items = [query] if query else []
        if operation.webhook:
            # Our job token's parameters, unless the caller sends its own of a name.
            own = {item.split("=", 1)[0] for item in query.split("&")}
            query_items[:0] = [item for item in self._webhook_query(credentials).split("&")
                               if item.split("=", 1)[0] not in own]
            if credentials:
                headers = {**self.sign(str(uuid.uuid4()), body or b""), **headers}
            else:
                headers = {**{p["name"]: p["example"] for p in operation.params("header")},
                           **headers}
        elif credentials:
            headers = {**self.bearer(), **headers}
        url = fill_path(path or operation.path)
        if query_items:
            url += "?" + "&".join(query_items)
        try:
            return self.client.open(url, method=operation.method, data=body, headers=headers)
        except Exception as exc:  # noqa: BLE001 - exactly what must not happen
            raise AssertionError(
                f"{operation}: {type(exc).__name__} escaped the app's error handling "
                f"(the client gets gunicorn's HTML 500)") from exc

    def _webhook_query(self, credentials: bool) -> str:
        from shared.fal.webhooks import job_token

        if not credentials:
            return "job=3b6bc467-f8a7-4f55-8fbc-487331cf08b3&attempt=1&token=EXAMPLE"
        job = str(uuid.uuid4())
        return f"job={job}&attempt=1&token={job_token(self.webhook_secret, job, 1)}"


def fill_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from shared.core.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('boundary') / 'hairfluencer.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def services(request: pytest.FixtureRequest, svc: Services, dispatch: Any) -> Iterator[Services]:
    """The app's services on PostgreSQL, or on SQLite as `hairfluencer dev` runs by
    default: each refuses different text (NUL; lone surrogates), so both are tried."""
    if request.param == "postgresql":
        yield svc
        return
    lite = Services.from_settings(replace(svc.settings, database_url=request.getfixturevalue(
        "sqlite_url")))
    lite.dispatch = dispatch
    use_services(lite)  # the worker's tasks run in process against it
    try:
        yield lite
    finally:
        use_services(svc)
        lite.engine.dispose()


@pytest.fixture
def boundary(services, emulator, dispatch, token) -> Iterator[Boundary]:
    from devstack.fal_emulator import load_signing_key

    # Every user gets DAILY presigns and try-ons; the rates are lifted (each example
    # is a new user, and the point is the boundary, not the rate).
    services.settings = replace(services.settings, presign_daily_quota=DAILY,
                                tryon_daily_quota=DAILY)
    s = services.settings
    quotas = QuotaService(s.redis_url, presign_daily=DAILY, tryon_daily=DAILY,
                          user_rate="100000/second", ip_rate="100000/second",
                          namespace=f"boundary-{uuid.uuid4().hex}")
    app = create_app(s, services, quotas, configure_logs=False)  # not `testing`: as served
    dispatch.run_inline = False  # a created job or a verified completion stays queued
    key = load_signing_key(emulator.state_dir)

    def sign(request_id: str, body: bytes) -> dict[str, str]:
        ts = str(int(time.time()))
        message = f"{request_id}\nfal-user\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
        return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": "fal-user",
                "X-Fal-Webhook-Timestamp": ts, "X-Fal-Webhook-Signature": key.sign(message).hex()}

    yield Boundary(app.test_client(), token, s.webhook_secret, sign)


# --- what every answer must be ----------------------------------------------------

def assert_ours(response: Any, what: str) -> dict[str, Any] | None:
    """Never a 5xx; at >= 400 our JSON envelope. The error object, if any."""
    status = response.status_code
    text = response.get_data()[:300]
    assert status < 500, f"{what}: {status} {text!r}"
    if status < 400:
        return None
    assert response.mimetype == "application/json", f"{what}: {status} {response.mimetype} {text!r}"
    body = json.loads(response.get_data())
    assert set(body) == {"error"}, f"{what}: {text!r}"
    error = body["error"]
    assert set(error) >= ENVELOPE_FIELDS, f"{what}: {error}"
    assert error["code"] in ERROR_KINDS and error["messageKey"] == f"errors.{error['code']}"
    assert isinstance(error["message"], str) and error["message"], what
    assert isinstance(error["retriable"], bool), what
    assert error["correlationId"] == response.headers["X-Request-ID"], what
    return dict(error)


def assert_refused_naming(response: Any, name: str, what: str) -> None:
    """422 `request.invalid`, and the field named (never its value) in the details."""
    error = assert_ours(response, what)
    assert response.status_code == 422 and error and error["code"] == "request.invalid", \
        f"{what}: {response.status_code} {error}"
    assert name.lower() in json.dumps(error.get("details")).lower(), \
        f"{what}: the refusal does not name {name!r}: {error}"


# --- arbitrary JSON ---------------------------------------------------------------

# Every category, surrogates included (hypothesis leaves them out unless told).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON_VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=6)
    | st.dictionaries(ANY_TEXT, children, max_size=6), max_leaves=30)
EXTREME_NUMBERS = (st.sampled_from(["1e999999", "-1e999999", "1e-999999", "1E400", "-0",
                                    "NaN", "Infinity", "-Infinity", "-0.0e-0"])
                   | st.integers(4_000, 20_000).map(lambda n: "9" * n)  # past int()'s limit
                   | st.integers(19, 400).map(lambda n: "1" + "0" * n)  # past 64 bits
                   | st.integers(300, 5_000).map(lambda n: "0." + "0" * n + "1"))


def escape(character: str) -> str:
    return f"\\u{ord(character):04x}"


def json_text(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity as literals


@st.composite
def fragments(draw: st.DrawFn) -> str:
    """A JSON value as raw text, including what `json.dumps` would never write."""
    kind = draw(st.sampled_from(["value", "number", "deep", "wide", "refused", "long"]))
    if kind == "value":
        return json_text(draw(JSON_VALUES), draw(st.booleans()))
    if kind == "number":
        return draw(EXTREME_NUMBERS)
    if kind == "deep":
        depth = draw(st.integers(50, 5_000))
        opening = draw(st.sampled_from(["[", '{"a":', '[{"a":', "unterminated"]))
        if opening == "unterminated":  # the parser must stop before the end
            return "[" * depth
        closing = {"[": "]", '{"a":': "}", '[{"a":': "}]"}[opening]
        inner = draw(st.sampled_from(["0", "null", '"x"', "[]", "{}"]))
        return opening * depth + inner + closing * depth
    if kind == "wide":
        count = draw(st.integers(100, 6_000))
        if draw(st.booleans()):
            return "{" + ",".join(f'"k{i}":{i}' for i in range(count)) + "}"
        return "[" + ",".join("0" for _ in range(count)) + "]"
    if kind == "long":
        return '"' + "a" * draw(st.integers(1_000, 70_000)) + '"'
    prefix = json_text(draw(ANY_TEXT), True)[1:-1]
    suffix = json_text(draw(ANY_TEXT), True)[1:-1]
    return f'"{prefix}{escape(draw(st.sampled_from(REFUSED)))}{suffix}"'


PLACEHOLDER = "\x01placeholder\x01"


def with_member(example: dict[str, Any], path: tuple[str, ...], raw: str) -> str:
    """The example's JSON text with the member at `path` replaced by raw JSON text."""
    body = json.loads(json.dumps(example))
    node = body
    for name in path[:-1]:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[path[-1]] = PLACEHOLDER
    return json.dumps(body).replace(json.dumps(PLACEHOLDER), raw)


@st.composite
def documents(draw: st.DrawFn, operation: Operation) -> bytes:
    example = operation.example_body() or {"locale": "en"}
    members = [(name,) for name in example]
    schema = operation.body_schema()
    if schema:
        members += string_fields(schema)
    shape = draw(st.sampled_from(["whole", "member", "duplicate", "extra", "binary", "empty"]))
    if shape == "binary":
        return draw(st.binary(max_size=300))
    if shape == "empty":
        return b""
    if shape == "whole":
        text = draw(fragments())
    elif shape == "member":
        path = draw(st.sampled_from(members) | ANY_TEXT.map(lambda k: (k,)))
        text = with_member(example, path, draw(fragments()))
    elif shape == "duplicate":
        name = draw(st.sampled_from(members))[0]
        duplicate = f"{json.dumps(name)}: {draw(fragments())}, "
        text = "{" + duplicate + json.dumps(example)[1:]
    else:
        extra = draw(st.dictionaries(ANY_TEXT, JSON_VALUES, min_size=1, max_size=8))
        text = json_text({**example, **extra}, draw(st.booleans()))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16",
                                     "utf-32"]))
    return text.encode(encoding, "surrogatepass")


@st.composite
def queries(draw: st.DrawFn, operation: Operation) -> str:
    """A query string: the operation's parameters (and strangers), any text in them,
    percent-encoded as UTF-8 (lone surrogates as their three bytes)."""
    names = [p["name"] for p in operation.params("query") if not operation.webhook]
    chosen = draw(st.lists(st.sampled_from(names) | ANY_TEXT, max_size=4)) if names else \
        draw(st.lists(ANY_TEXT, max_size=2))
    values = [draw(ANY_TEXT | st.sampled_from(REFUSED) | st.sampled_from(
        ["1e999999", "NaN", "-1", "0", "9" * 40, "9999-12-31T23:59:59-14:00"]))
        for _ in chosen]
    return "&".join(f"{encode(n)}={encode(v)}" for n, v in zip(chosen, values, strict=True))


def encode(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


CONTENT_TYPES = st.sampled_from(["application/json", "application/json", "application/json",
                                 "application/json; charset=utf-8", "application/x+json",
                                 "text/plain"])


@pytest.mark.parametrize("credentials", [True, False], ids=["credentials", "none"])
@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
@common_settings
@given(data=st.data())
def test_arbitrary_json_never_gets_a_5xx_and_always_our_envelope(boundary, operation,
                                                                 credentials, data):
    body = data.draw(documents(operation), label="body")
    query = data.draw(queries(operation), label="query")
    content_type = data.draw(CONTENT_TYPES, label="content type")
    response = boundary.send(operation, body, credentials=credentials, query=query,
                             content_type=content_type)
    assert_ours(response, f"{operation} {body[:120]!r}… ({len(body)} bytes)")


def every_class(operation: Operation) -> Iterator[tuple[str, bytes]]:
    """One known member of each class of document, at every operation on every run
    (the draws above find others)."""
    example = operation.example_body() or {"locale": "en"}
    first = next(iter(example))
    deep_arrays = "[" * 3_000 + "]" * 3_000
    yield "3,000 levels of arrays", deep_arrays.encode()
    yield "3,000 levels of objects", ('{"a":' * 3_000 + "0" + "}" * 3_000).encode()
    yield "3,000 levels in a member", with_member(example, (first,), deep_arrays).encode()
    yield "unterminated depth", b"[" * 60_000
    yield "5,000 members", ("{" + ",".join(f'"k{i}":{i}' for i in range(5_000)) + "}").encode()
    yield "30,000 elements", ("[" + ",".join("0" * 30_000) + "]").encode()
    yield "over the size limit", b"[" + b"0," * 40_000 + b"0]"
    yield "duplicate key", ("{" + json.dumps(first) + ': "other", '
                            + json.dumps(example)[1:]).encode()
    for literal in ("1e999999", "-1e999999", "NaN", "Infinity", "-Infinity", "9" * 5_000,
                    "1" + "0" * 30):
        yield f"{literal[:12]} in a member", with_member(example, (first,), literal).encode()
        yield f"{literal[:12]} alone", literal.encode()
    yield "a member named by a lone surrogate", ('{"\\ud800": 1, '
                                                 + json.dumps(example)[1:]).encode()
    yield "invalid UTF-8", b'{"a": "\xed\xa0\x80", "b": "\xff"}'
    for encoding in ("utf-8-sig", "utf-16", "utf-32"):
        yield encoding, json.dumps(example).encode(encoding)
    for text in ("", "null", "[]", '"x"', "{", "true false", "\x00"):
        yield f"the text {text!r}", text.encode()


@pytest.mark.parametrize("credentials", [True, False], ids=["credentials", "none"])
@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_every_class_of_document_at_every_operation(boundary, operation, credentials):
    failures = []
    for label, body in every_class(operation):
        try:
            assert_ours(boundary.send(operation, body, credentials=credentials), label)
        except AssertionError as failure:
            line = str(failure).splitlines()[0][:300]
            failures.append(line if line.startswith(label) else f"{label}: {line}")
    assert not failures, f"{operation}:\n" + "\n".join(failures)


def test_the_operations_are_the_served_documents(boundary):
    """What the tests above walk is what the app serves (docs/openapi.json has its own
    diff test; this keeps the list here from missing an operation)."""
    served = boundary.client.get("/openapi.json").get_json()
    assert {str(op) for op in documented_operations(served)} == {str(op) for op in DOCUMENTED}


# --- the strings the server must refuse, in every field -----------------------------

FORCED = [(c, form) for c in REFUSED for form in ("escape", "raw")]


def forced_text(character: str, form: str) -> str:
    """A JSON string literal holding the character, as a `\\u` escape or as its raw
    UTF-8 bytes (a lone surrogate's three bytes are not UTF-8)."""
    inner = escape(character) if form == "escape" else character
    return f'"with{inner} bangs"'


@pytest.mark.parametrize("credentials", [True, False], ids=["credentials", "none"])
@pytest.mark.parametrize("operation", WITH_BODY, ids=str)
def test_refused_strings_in_every_body_field(boundary, operation, credentials):
    fields = string_fields(operation.body_schema() or {})
    assert fields, operation
    for path in fields:
        for character, form in FORCED:
            text = with_member(operation.example_body(), path, forced_text(character, form))
            body = text.encode("utf-8", "surrogatepass")
            what = f"{operation} {'.'.join(path)}={form} U+{ord(character):04X}"
            response = boundary.send(operation, body, credentials=credentials)
            error = assert_ours(response, what)
            if not operation.bearer:
                continue  # the webhook: no 5xx and our envelope (fal retries a refusal)
            assert error is not None, f"{what}: accepted ({response.status_code})"
            if credentials and form == "escape":
                assert_refused_naming(response, path[-1], what)
            elif credentials:  # not UTF-8, or a non-character: the document is refused
                assert response.status_code in (400, 422), f"{what}: {error}"


@pytest.mark.parametrize("credentials", [True, False], ids=["credentials", "none"])
@pytest.mark.parametrize("operation", WITH_QUERY, ids=str)
def test_refused_strings_in_every_query_parameter(boundary, operation, credentials):
    body = json.dumps(operation.example_body()).encode() if operation.body_schema() else None
    for parameter in operation.params("query"):
        for character in REFUSED:
            name = parameter["name"]
            what = f"{operation} ?{name}= U+{ord(character):04X}"
            query = f"{name}={encode('with' + character + ' bangs')}"
            response = boundary.send(operation, body, credentials=credentials, query=query)
            error = assert_ours(response, what)
            if credentials and operation.bearer and character in SURROGATES:
                # A lone surrogate's bytes are not UTF-8, so what arrives is their
                # %-text (werkzeug leaves it encoded): text like any other.
                continue
            assert error is not None, f"{what}: accepted ({response.status_code})"
            if credentials and operation.bearer:
                assert_refused_naming(response, name, what)


@pytest.mark.parametrize("operation", WITH_PATH, ids=str)
def test_refused_strings_in_every_path_parameter(boundary, operation):
    body = json.dumps(operation.example_body()).encode() if operation.body_schema() else None
    for character in REFUSED:
        what = f"{operation} U+{ord(character):04X} in the path"
        path = re.sub(r"\{[^}]+\}", encode(f"{uuid.uuid4()}{character}"), operation.path)
        response = boundary.send(operation, body, credentials=True, path=path)
        error = assert_ours(response, what)
        assert error is not None and response.status_code in (404, 422), \
            f"{what}: {response.status_code} {error}"


IDEMPOTENCY_KEYS = [("NUL", "tap\x00-1", True), ("over-long", "k" * 256, True),
                    ("lone surrogate bytes", "tap-\xed\xa0\x80", False),
                    ("non-character bytes", "tap-\xef\xbf\xbe", False),
                    ("control characters", "tap-\x01\x7f", False)]


@pytest.mark.parametrize("credentials", [True, False], ids=["credentials", "none"])
def test_refused_idempotency_keys(boundary, credentials):
    """What a WSGI server hands over is latin-1 text of the header's bytes: a NUL and
    an over-long key must be refused (never truncated); other bytes may be kept, but
    never a 5xx."""
    operation = next(op for op in DOCUMENTED
                     if any(p["name"] == "Idempotency-Key" for p in op.params("header")))
    body = json.dumps(operation.example_body()).encode()
    for label, key, must_refuse in IDEMPOTENCY_KEYS:
        what = f"{operation} Idempotency-Key {label}"
        response = boundary.send(operation, body, credentials=credentials,
                                 headers={"Idempotency-Key": key})
        error = assert_ours(response, what)
        assert error is not None, f"{what}: accepted ({response.status_code})"  # no such upload
        if credentials and must_refuse:
            assert_refused_naming(response, "Idempotency-Key", what)


# --- a refusal costs no quota ----------------------------------------------------------

def refused_bodies(valid: dict[str, Any], schema: dict[str, Any],
                   numeric: tuple[str, ...] = ()) -> Iterator[tuple[str, bytes]]:
    """The valid body made unacceptable one way at a time."""
    for path in string_fields(schema):
        for character, form in FORCED:
            text = with_member(valid, path, forced_text(character, form))
            yield f"{'.'.join(path)}={form} U+{ord(character):04X}", text.encode(
                "utf-8", "surrogatepass")
    deep = "[" * 3_000 + "]" * 3_000
    yield "3,000 levels deep", deep.encode()
    yield "deep member", with_member(valid, (next(iter(valid)),), deep).encode()
    first = next(iter(valid))
    yield "duplicate key", ("{" + json.dumps(first) + ': "other", ' + json.dumps(valid)[1:]).encode()
    for name in numeric:
        for literal in ("1e999999", "NaN", "Infinity", "9" * 5_000):
            yield f"{name}={literal[:12]}", with_member(valid, (name,), literal).encode()


def remaining(boundary: Boundary, operation: Operation, headers: dict[str, str],
              body: dict[str, Any], success: int) -> int:
    """How many more times the user can do it today: valid requests until the first
    429 `quota.exceeded` (at most DAILY + 1 of them)."""
    done = 0
    for _ in range(DAILY + 1):
        response = boundary.client.open(operation.path, method=operation.method, json=body,
                                        headers=headers)
        if response.status_code != success:
            error = assert_ours(response, f"{operation} valid")
            assert response.status_code == 429 and error and error["code"] == "quota.exceeded", \
                error
            return done
        done += 1
    return done


def operation_at(method: str, path: str) -> Operation:
    return next(op for op in DOCUMENTED if (op.method, op.path) == (method, path))


def send_refused(boundary: Boundary, operation: Operation, headers: dict[str, str],
                 requests: Iterable[tuple[str, bytes, dict[str, str]]]) -> tuple[list[str], int]:
    """Each request once: what was not refused in our envelope, and how many of them
    were accepted (those pay, rightly)."""
    problems, accepted = [], 0
    for label, body, extra in requests:
        what = f"{operation} {label}"
        try:
            response = boundary.send(operation, body, credentials=False,
                                     headers={**headers, **extra})
            error = assert_ours(response, what)
        except AssertionError as failure:
            line = str(failure).splitlines()[0][:200]
            problems.append(line if line.startswith(what) else f"{what}: {line}")
            continue
        if error is None:
            accepted += 1
            problems.append(f"{what}: accepted ({response.status_code})")
    return problems, accepted


def assert_quota_intact(boundary: Boundary, operation: Operation, headers: dict[str, str],
                        valid: dict[str, Any], success: int,
                        refusals: tuple[list[str], int]) -> None:
    problems, accepted = refusals
    left = remaining(boundary, operation, headers, valid, success)
    expected = max(0, DAILY - accepted)
    assert not problems and left == expected, (
        f"{operation}: {left} of the day's {DAILY} left after the refusals (expected "
        f"{expected}); not refused:\n" + "\n".join(problems))


def test_refused_presigns_cost_no_quota(boundary):
    operation = operation_at("POST", "/v1/uploads/presign")
    headers = boundary.bearer()
    valid = {"contentType": "image/jpeg", "contentLength": len(ASTRONAUT),
             "checksum": sha256_b64(ASTRONAUT), "locale": "en"}
    requests = [(label, body, {}) for label, body in refused_bodies(
        valid, operation.body_schema() or {}, numeric=("contentLength",))]
    assert len(requests) > DAILY
    assert_quota_intact(boundary, operation, headers, valid, 201,
                        send_refused(boundary, operation, headers, requests))


def test_refused_try_ons_cost_no_quota(boundary, dispatch):
    operation = operation_at("POST", "/v1/try-ons")
    headers = boundary.bearer()
    dispatch.run_inline = True  # the selfie's validation runs; the jobs below stay queued
    upload = upload_ready(boundary.client, headers, ASTRONAUT)
    dispatch.run_inline = False
    assert upload["status"] == "ready", upload
    valid = {"uploadId": upload["uploadId"], "hairstyleId": "bob", "locale": "en",
             "prompt": "with bangs"}
    requests = [(label, body, {}) for label, body in refused_bodies(
        valid, operation.body_schema() or {})]
    requests += [(f"Idempotency-Key {label}", json.dumps(valid).encode(), {"Idempotency-Key": key})
                 for label, key, must_refuse in IDEMPOTENCY_KEYS if must_refuse]
    assert len(requests) > DAILY
    assert_quota_intact(boundary, operation, headers, valid, 202,
                        send_refused(boundary, operation, headers, requests))
