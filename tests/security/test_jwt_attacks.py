"""Bearer tokens an attacker would try, against a real JWKS endpoint the test runs
(and takes down, and rotates): every bad token 401 `auth.invalid_token` (or expired),
a JWKS outage 503 (retriable: the app keeps its session), unknown key ids never make
us fetch more than once per interval (`JWT_JWKS_REFETCH_SECONDS`) nor wait for a
fetch, a key just rotated in answered 503 with Retry-After until the background fetch
has it (then 200), a key removed from the set refused after the next refresh."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from api.app import create_app
from shared.access.auth import TokenVerifier
from shared.core.jwks import JwksCache, KeysUnavailable
from tests.conftest import DEV_SECRET, make_settings

ISSUER = "https://auth.hairfluencer.test"
AUDIENCE = "hairfluencer-api"


class Jwks:
    """The auth server's key set: what it publishes, whether it answers, how often asked."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()
        # The key the auth server rotates in later (published once "rsa-2" is added).
        self.rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published = {"rsa-1", "ed-1"}
        self.up = True
        self.fetches = 0

    def document(self) -> dict[str, Any]:
        keys = []
        if "rsa-1" in self.published:
            keys.append({**json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key())),
                         "kid": "rsa-1", "alg": "RS256", "use": "sig"})
        if "ed-1" in self.published:
            keys.append({**json.loads(OKPAlgorithm.to_jwk(self.ed.public_key())),
                         "kid": "ed-1", "alg": "EdDSA", "use": "sig"})
        if "rsa-2" in self.published:
            keys.append({**json.loads(RSAAlgorithm.to_jwk(self.rsa2.public_key())),
                         "kid": "rsa-2", "alg": "RS256", "use": "sig"})
        return {"keys": keys}


def serve(state: Jwks) -> tuple[str, ThreadingHTTPServer]:
    """The auth server's JWKS endpoint on a free port (also used by test_auth.py)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            state.fetches += 1
            body = json.dumps(state.document()).encode() if state.up else b""
            self.send_response(200 if state.up else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json", server


@pytest.fixture
def jwks() -> Iterator[tuple[str, Jwks]]:
    state = Jwks()
    url, server = serve(state)
    yield url, state
    server.shutdown()


def client_trusting(jwks_url: str, svc, quotas, **overrides: Any):
    """A test client of the app that trusts this JWKS only (no development secret);
    also used by test_auth.py."""
    settings = make_settings(database_url=svc.settings.database_url,
                             s3_endpoint_url=svc.settings.s3_endpoint_url,
                             uploads_bucket=svc.settings.uploads_bucket,
                             processed_bucket=svc.settings.processed_bucket, jwt_jwks_url=jwks_url,
                             jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_dev_secret="",
                             **overrides)
    return create_app(settings, svc, quotas, configure_logs=False).test_client()


@pytest.fixture
def client(jwks, svc, quotas):
    return client_trusting(jwks[0], svc, quotas)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "user_42", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rs256(state: Jwks, kid: str = "rsa-1", **overrides: Any) -> str:
    key = state.rsa2 if kid == "rsa-2" else state.rsa
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers={"kid": kid})


def eddsa(state: Jwks, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), state.ed, algorithm="EdDSA", headers={"kid": "ed-1"})


def call(client, token: str) -> Any:
    return client.get("/v1/uploads", headers={"Authorization": f"Bearer {token}"})


def _hs_with_the_public_key(state: Jwks) -> str:
    """The classic confusion: HS256 "signed" with the RSA public key as its secret."""
    import hashlib
    import hmac

    pem = state.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    segments = [jwt.utils.base64url_encode(json.dumps(part).encode()) for part in
                ({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims())]
    signing_input = b".".join(segments)
    signature = jwt.utils.base64url_encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def _unsigned(alg: str) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": alg, "kid": "rsa-1"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    return f"{header.decode()}.{payload.decode()}."


ATTACKS = {
    "alg none": lambda s: _unsigned("none"),
    "alg None": lambda s: _unsigned("None"),
    "HS256 with the RSA public key as secret": _hs_with_the_public_key,
    "HS256 with a guessed dev secret": lambda s: jwt.encode(claims(), DEV_SECRET, algorithm="HS256",
                                                            headers={"kid": "rsa-1"}),
    "RS256 claimed, EdDSA key named": lambda s: jwt.encode(claims(), s.rsa, algorithm="RS256",
                                                           headers={"kid": "ed-1"}),
    "not yet valid": lambda s: rs256(s, nbf=int(time.time()) + 3600),
    "issued in the future": lambda s: rs256(s, iat=int(time.time()) + 3600),
    "wrong issuer": lambda s: rs256(s, iss="https://evil.example"),
    "wrong audience": lambda s: eddsa(s, aud="another-api"),
    "no audience": lambda s: rs256(s, aud=None),
    "no sub": lambda s: rs256(s, sub=None),
    "sub with a final newline": lambda s: rs256(s, sub="alice\n"),
    "sub with a path": lambda s: rs256(s, sub="../bob"),
    "sub too long": lambda s: rs256(s, sub="a" * 65),
    "sub not a string": lambda s: rs256(s, sub=42),
    "oversized token": lambda s: rs256(s, pad="x" * 20000),
    "signature of another key": lambda s: jwt.encode(
        claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256", headers={"kid": "rsa-1"}),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attacks_are_401(client, jwks, attack):
    _, state = jwks
    response = call(client, ATTACKS[attack](state))
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"]["code"] == "auth.invalid_token"


def test_expired_is_401_expired(client, jwks):
    _, state = jwks
    response = call(client, rs256(state, exp=int(time.time()) - 3600))
    assert (response.status_code, response.get_json()["error"]["code"]) == (401, "auth.expired_token")


def test_good_tokens_pass_and_the_set_is_fetched_once(client, jwks):
    _, state = jwks
    for _ in range(5):
        assert call(client, rs256(state)).status_code == 200
        assert call(client, eddsa(state)).status_code == 200
    assert state.fetches == 1


def eventually(answer: Any, status: int, timeout: float = 10.0) -> Any:
    """Asks again (at most 10 times a second: under the per-IP rate limit) until the
    answer has this status."""
    deadline = time.monotonic() + timeout
    while (response := answer()).status_code != status and time.monotonic() < deadline:
        time.sleep(0.1)
    return response


def assert_retriable_503(response: Any, most_seconds: int) -> None:
    assert response.status_code == 503, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["retriable"]) == ("service.unavailable", True)
    assert 1 <= int(response.headers["Retry-After"]) <= most_seconds


REFETCH = 2  # JWT_JWKS_REFETCH_SECONDS in the tests below


def test_a_key_just_rotated_in_is_503_with_retry_after_until_fetched_then_200(jwks, svc, quotas):
    _, state = jwks
    client = client_trusting(jwks[0], svc, quotas, jwt_jwks_refetch_seconds=REFETCH)
    assert call(client, rs256(state)).status_code == 200
    state.published.add("rsa-2")  # the auth server rotates in a key and signs with it
    token = rs256(state, kid="rsa-2")
    started = time.monotonic()
    first = call(client, token)
    assert time.monotonic() - started < 1  # nobody waits for the fetch
    # Not 401: the app must not sign the user out; it retries after at most the interval.
    assert_retriable_503(first, 1 + REFETCH)
    response = eventually(lambda: call(client, token), 200)
    assert response.status_code == 200, response.get_json()
    assert state.fetches == 2  # one background fetch, however often the app asked
    assert call(client, rs256(state)).status_code == 200  # the old key still works


def test_unknown_kids_are_503_until_a_later_fetch_lacks_them_then_401_at_one_fetch_per_interval(
        jwks, svc, quotas):
    _, state = jwks
    client = client_trusting(jwks[0], svc, quotas, jwt_jwks_refetch_seconds=REFETCH)
    assert call(client, rs256(state)).status_code == 200
    started, fetched = time.monotonic(), state.fetches
    tokens = [rs256(state, kid=f"random-{n}") for n in range(20)]
    for token in tokens:  # they might be keys just rotated in: nothing says otherwise yet
        assert_retriable_503(call(client, token), 1 + REFETCH)
    assert state.fetches == fetched  # the interval since the last fetch has not passed
    eventually(lambda: call(client, tokens[0]), 401)
    for token in tokens:  # the set fetched after they were first seen lacks them
        response = call(client, token)
        assert response.status_code == 401, response.get_json()
        assert response.get_json()["error"]["code"] == "auth.invalid_token"
    for n in range(20):  # more random kids: still no more than one fetch per interval
        assert call(client, rs256(state, kid=f"more-{n}")).status_code == 503
    time.sleep(0.2)
    assert state.fetches - fetched <= 1 + (time.monotonic() - started) // REFETCH


def test_unknown_kids_fetch_at_most_once_per_interval(client, jwks):
    _, state = jwks  # the default interval (5 s): the test ends well within it
    assert call(client, rs256(state)).status_code == 200
    fetched = state.fetches
    for n in range(20):
        assert_retriable_503(call(client, rs256(state, kid=f"random-{n}")), 6)
    assert state.fetches == fetched


def test_unknown_kids_while_the_jwks_is_down_do_not_wait_on_it(client, jwks):
    _, state = jwks
    state.up = False
    started = time.monotonic()
    answers = [call(client, rs256(state, kid=f"random-{n}")) for n in range(20)]
    assert time.monotonic() - started < 3
    assert state.fetches <= 1  # one attempt, then nothing for a minute
    for response in answers:  # we cannot see keys: retriable, the app keeps its session
        assert response.status_code == 503
        error = response.get_json()["error"]
        assert (error["code"], error["retriable"]) == ("service.unavailable", True)
        assert response.headers["Retry-After"]


def test_a_jwks_outage_after_a_good_fetch_keeps_known_keys_working(jwks):
    url, state = jwks
    clock = [0.0]
    verifier = TokenVerifier(make_settings(jwt_jwks_url=url, jwt_issuer=ISSUER,
                                           jwt_audience=AUDIENCE, jwt_dev_secret=""))
    verifier._jwks = JwksCache(url, min_refetch=60, clock=lambda: clock[0])
    assert verifier.verify(rs256(state)).user_id == "user_42"
    state.up = False
    clock[0] += 3600  # long past the cache's age: a refresh is due, and fails
    assert verifier.verify(rs256(state)).user_id == "user_42"


def test_a_key_removed_from_the_set_is_refused_after_the_next_refresh(jwks):
    url, state = jwks
    clock = [0.0]
    verifier = TokenVerifier(make_settings(jwt_jwks_url=url, jwt_issuer=ISSUER,
                                           jwt_audience=AUDIENCE, jwt_dev_secret=""))
    verifier._jwks = JwksCache(url, max_age=300, min_refetch=60, clock=lambda: clock[0])
    token = eddsa(state)
    assert verifier.verify(token).user_id == "user_42"
    state.published.discard("ed-1")  # the auth server retired the key
    clock[0] += 301
    from shared.access.auth import TokenError

    with pytest.raises(TokenError):
        verifier.verify(token)
    assert verifier.verify(rs256(state)).user_id == "user_42"


def test_a_set_without_a_usable_key_is_unavailable_not_a_crash():
    cache = JwksCache("https://auth.test/jwks", fetch=lambda url: {"keys": [{"kty": "none"}]})
    with pytest.raises(KeysUnavailable):
        cache.keys()
