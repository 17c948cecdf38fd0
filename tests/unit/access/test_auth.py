"""Bearer tokens in development (HS256 with the dev secret): what passes, what
is refused and with which code. No JWKS server: the asymmetric path is in
tests/security/test_jwt_attacks.py."""

from __future__ import annotations

import time
from dataclasses import replace

import jwt
import pytest

from shared.access.auth import MAX_TOKEN_BYTES, Principal, TokenError, TokenVerifier, issue_dev_token
from tests.conftest import DEV_SECRET, make_settings

OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256"


@pytest.fixture
def dev_settings():  # type: ignore[no-untyped-def]
    return make_settings()


def code_of(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenError) as error:
        verifier.verify(token)
    return error.value.code


def token(**claims: object) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "aud": "hairfluencer-api", "iat": now, "exp": now + 60,
                       **claims}, DEV_SECRET, algorithm="HS256")


def test_a_dev_token_names_its_user(dev_settings):
    verifier = TokenVerifier(dev_settings)
    assert verifier.verify(issue_dev_token(dev_settings, "alice_1", 60)) == Principal("alice_1")
    assert verifier.verify(token()) == Principal("alice")


@pytest.mark.parametrize(("make", "code"), [
    (lambda: token(exp=int(time.time()) - 120), "auth.expired_token"),
    (lambda: token(exp=int(time.time()) - 10), None),  # within the leeway
    (lambda: token(aud="another-api"), "auth.invalid_token"),
    (lambda: token(sub="../bob"), "auth.invalid_token"),  # becomes part of object keys
    (lambda: token(sub=42), "auth.invalid_token"),
    (lambda: jwt.encode({"sub": "alice", "aud": "hairfluencer-api"}, DEV_SECRET,
                        algorithm="HS256"), "auth.invalid_token"),  # no exp
    (lambda: jwt.encode({"sub": "alice", "aud": "hairfluencer-api",
                         "exp": int(time.time()) + 60}, OTHER_SECRET, algorithm="HS256"),
     "auth.invalid_token"),
    (lambda: jwt.encode({"sub": "alice", "aud": "hairfluencer-api",
                         "exp": int(time.time()) + 60}, None, algorithm="none"),
     "auth.invalid_token"),
    (lambda: "not.a.token", "auth.invalid_token"),
    (lambda: token(pad="x" * MAX_TOKEN_BYTES), "auth.invalid_token"),
], ids=["expired", "leeway", "audience", "path-user", "int-user", "no-exp", "other-secret",
        "alg-none", "garbage", "oversized"])
def test_refusals(dev_settings, make, code):
    verifier = TokenVerifier(dev_settings)
    if code is None:
        assert verifier.verify(make()).user_id == "alice"
    else:
        assert code_of(verifier, make()) == code


def test_without_a_dev_secret_hs256_is_refused_and_none_is_issued(dev_settings):
    no_secret = replace(dev_settings, jwt_dev_secret="")
    assert code_of(TokenVerifier(no_secret), token()) == "auth.invalid_token"
    with pytest.raises(RuntimeError):
        issue_dev_token(no_secret, "alice")
    with pytest.raises(ValueError):
        issue_dev_token(dev_settings, "not/a/user")


def test_the_jwks_fetch_bound_stays_well_under_the_worker_timeout():
    from api import gunicorn_conf
    from shared.core.config import ConfigError

    settings = make_settings(jwt_jwks_url="https://auth.test/jwks", jwt_dev_secret="")
    assert settings.jwt_jwks_fetch_timeout_seconds == 5
    assert TokenVerifier(settings)._jwks.fetch_timeout == 5  # type: ignore[union-attr]
    for bad in (0, 11):
        with pytest.raises(ConfigError):
            make_settings(jwt_jwks_fetch_timeout_seconds=bad)
    assert gunicorn_conf.timeout > 2 * 10  # the largest bound allowed, with margin
