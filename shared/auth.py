"""Bearer-token verification (PyJWT).

Production: RS256/EdDSA tokens from the app's auth server (Better Auth's JWT
plugin), keys fetched from its JWKS URL and cached by PyJWKClient, issuer and
audience required. Development: HS256 with a local secret. `alg: none` and any
algorithm outside the configured set are refused by PyJWT itself because we
always pass an explicit algorithm list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from shared.config import Settings
from shared.keys import USER_ID

ASYMMETRIC_ALGORITHMS = ["RS256", "EdDSA"]
JWKS_CACHE_SECONDS = 300
LEEWAY_SECONDS = 30


class TokenError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code  # auth.invalid_token | auth.expired_token | auth.missing_token


@dataclass(frozen=True)
class Principal:
    user_id: str


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._jwks: jwt.PyJWKClient | None = None
        if settings.jwt_jwks_url:
            self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True,
                                         lifespan=JWKS_CACHE_SECONDS, timeout=5)

    def verify(self, token: str) -> Principal:
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise TokenError("auth.expired_token") from None
        except (jwt.PyJWTError, ValueError):
            raise TokenError("auth.invalid_token") from None
        sub = claims.get("sub")
        # The user id becomes part of object keys: validate before any use.
        if not isinstance(sub, str) or not USER_ID.match(sub):
            raise TokenError("auth.invalid_token")
        return Principal(user_id=sub)

    def _decode(self, token: str) -> dict[str, object]:
        s = self._settings
        options: Any = {"require": ["exp", "sub"]}
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if self._jwks is not None and alg in ASYMMETRIC_ALGORITHMS:
            key = self._jwks.get_signing_key_from_jwt(token).key
            return jwt.decode(token, key, algorithms=ASYMMETRIC_ALGORITHMS,
                              audience=s.jwt_audience or None, issuer=s.jwt_issuer or None,
                              leeway=LEEWAY_SECONDS, options=options)
        if s.jwt_dev_secret and alg == "HS256":
            return jwt.decode(token, s.jwt_dev_secret, algorithms=["HS256"],
                              audience=s.jwt_audience or None, issuer=s.jwt_issuer or None,
                              leeway=LEEWAY_SECONDS, options=options)
        raise jwt.InvalidAlgorithmError("algorithm not accepted")


def issue_dev_token(settings: Settings, user_id: str, ttl_seconds: int = 7 * 24 * 3600) -> str:
    """A development token the local stack accepts (HS256 with the dev secret)."""
    if not settings.jwt_dev_secret:
        raise RuntimeError("no development secret configured (production refuses HS256)")
    if not USER_ID.match(user_id):
        raise ValueError("user id must match [A-Za-z0-9_-]{1,64}")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_dev_secret, algorithm="HS256")
