"""Bearer-token checks against a real JWKS endpoint (RS256 and EdDSA) and the
development HS256 secret: every bad token is 401 with a localized message; a JWKS
that never answers costs a request at most JWT_JWKS_FETCH_TIMEOUT_SECONDS (503)."""

from __future__ import annotations

import json
import socket
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.core.i18n import MESSAGES
from tests.conftest import DEV_SECRET, make_settings
from tests.security.test_jwt_attacks import (  # noqa: F401 - jwks: a fixture, found by name
    AUDIENCE,
    ISSUER,
    claims,
    client_trusting,
    eddsa,
    jwks,
    rs256,
)


@pytest.fixture
def jwks_client(jwks, svc, quotas):  # noqa: F811 - the imported fixture
    url, keys = jwks
    return client_trusting(url, svc, quotas), keys


def get(client, token: str | None, locale: str = "en", raw: str | None = None):
    headers = {"Accept-Language": locale}
    if raw is not None:
        headers["Authorization"] = raw
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.get("/v1/uploads", headers=headers)


def test_rs256_and_eddsa_tokens_from_jwks_are_accepted_and_keys_cached(jwks_client):
    client, keys = jwks_client
    before = keys.fetches
    for _ in range(3):
        assert get(client, rs256(keys)).status_code == 200
        assert get(client, eddsa(keys)).status_code == 200
    assert keys.fetches - before <= 1


def _none_alg_token() -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    return f"{header.decode()}.{payload.decode()}."


def _other_rsa_key_token() -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-1"})


BAD_TOKENS = {
    "missing": (lambda keys: None, "auth.missing_token"),
    "malformed": (lambda keys: "not.a.jwt", "auth.invalid_token"),
    "alg none": (lambda keys: _none_alg_token(), "auth.invalid_token"),
    "forged (other key)": (lambda keys: _other_rsa_key_token(), "auth.invalid_token"),
    "wrong issuer": (lambda keys: rs256(keys, iss="https://evil.test"), "auth.invalid_token"),
    "wrong audience": (lambda keys: eddsa(keys, aud="another-api"), "auth.invalid_token"),
    "expired": (lambda keys: rs256(keys, exp=int(time.time()) - 3600), "auth.expired_token"),
    "no exp": (lambda keys: rs256(keys, exp=None), "auth.invalid_token"),
    "sub unsafe for keys": (lambda keys: rs256(keys, sub="../bob"), "auth.invalid_token"),
    "HS256 when only JWKS is trusted": (
        lambda keys: jwt.encode(claims(), DEV_SECRET, algorithm="HS256"), "auth.invalid_token"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
@pytest.mark.parametrize("locale", ["en", "es"])
def test_bad_tokens_are_401(jwks_client, case, locale):
    client, keys = jwks_client
    make, code = BAD_TOKENS[case]
    response = get(client, make(keys), locale)
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"] == MESSAGES[code][locale]


def test_wrong_scheme_is_401(jwks_client):
    client, keys = jwks_client
    response = get(client, None, raw=f"Basic {rs256(keys)}")
    assert response.get_json()["error"]["code"] == "auth.invalid_token"


def test_dev_tokens(client, token):
    assert client.get("/v1/uploads", headers={"Authorization": f"Bearer {token('dev')}"}
                      ).status_code == 200
    other_secret = "another-secret-that-is-at-least-32-bytes-long"
    forged = jwt.encode(claims(aud="hairfluencer-api", iss=None), other_secret, algorithm="HS256")
    response = client.get("/v1/uploads", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_a_jwks_that_never_answers_is_503_within_the_fetch_bound(svc, quotas):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/.well-known/jwks.json"
    try:
        client = client_trusting(url, svc, quotas, jwt_jwks_fetch_timeout_seconds=1)
        token = jwt.encode(claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048),
                           algorithm="RS256", headers={"kid": "rsa-1"})
        answers = []
        for _ in range(2):  # the first asks the JWKS, the second is refetch-limited
            started = time.monotonic()
            response = get(client, token)
            answers.append((response.status_code, time.monotonic() - started))
            assert response.get_json()["error"]["code"] == "service.unavailable"
            assert response.headers["Retry-After"]
        assert [status for status, _ in answers] == [503, 503]
        assert answers[0][1] < 1.5 and answers[1][1] < 0.5
    finally:
        listener.close()


def test_production_refuses_the_dev_secret():
    from shared.core.config import ConfigError

    with pytest.raises(ConfigError):
        make_settings(env="production")
    production = {"env": "production", "jwt_dev_secret": "", "jwt_jwks_url": "https://x/jwks",
                  "jwt_issuer": ISSUER}
    settings = make_settings(**production, database_url="postgresql+psycopg://db/hf",
                             fal_key="key")
    assert settings.jwt_dev_secret == ""
    # the embedded defaults never stand in for a forgotten setting in production
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        make_settings(**production, fal_key="key")
    with pytest.raises(ConfigError, match="FAL_KEY"):
        make_settings(**production, database_url="postgresql+psycopg://db/hf")
