"""Bearer-token verification (PyJWT).

Production: RS256/EdDSA tokens from the app's auth server (Better Auth's JWT
plugin), keys from its JWKS URL kept by shared/core/jwks.py (its refresh policy is
ours), issuer and audience required. A token naming a key we have not seen yet may be
signed with one the auth server just rotated in: it is answered KeysUnavailable (503,
retriable, a short Retry-After) until a key set fetched after it was first seen says
whether the key exists; only then is it refused as an unknown key (401).
Development: HS256 with a local secret.
`alg: none` and any algorithm outside the configured set are refused by PyJWT
itself because we always pass an explicit algorithm list; the key's own type
decides the algorithm, so an RSA public key is never taken as an HMAC secret.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from shared.core.config import Settings
from shared.core.jwks import JwksCache, KeysUnavailable
from shared.storage.keys import USER_ID

ASYMMETRIC_ALGORITHMS = ["RS256", "EdDSA"]
JWKS_CACHE_SECONDS = 300
LEEWAY_SECONDS = 30
# Far above any real token; a bigger one is refused before it is parsed.
MAX_TOKEN_BYTES = 8192

__all__ = ["KeysUnavailable", "Principal", "TokenError", "TokenVerifier", "issue_dev_token"]


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
        self._jwks: JwksCache | None = None
        if settings.jwt_jwks_url:
            self._jwks = JwksCache(settings.jwt_jwks_url, max_age=JWKS_CACHE_SECONDS,
                                   min_refetch=settings.jwt_jwks_refetch_seconds,
                                   fetch_timeout=settings.jwt_jwks_fetch_timeout_seconds)

    def verify(self, token: str) -> Principal:
        """The caller, or TokenError; KeysUnavailable (with its `retry_after`) when the
        JWKS cannot be had, or cannot yet say whether the token's key exists."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("auth.invalid_token")
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise TokenError("auth.expired_token") from None
        except (jwt.PyJWTError, ValueError):
            raise TokenError("auth.invalid_token") from None
        sub = claims.get("sub")
        # The user id becomes part of object keys: validate before any use.
        if not isinstance(sub, str) or not USER_ID.fullmatch(sub):
            raise TokenError("auth.invalid_token")
        return Principal(user_id=sub)

    def _decode(self, token: str) -> dict[str, object]:
        s = self._settings
        options: Any = {"require": ["exp", "sub"]}
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if self._jwks is not None and alg in ASYMMETRIC_ALGORITHMS:
            kid = header.get("kid")
            # KeysUnavailable while no set fetched since this kid was first seen says.
            key = self._jwks.key_for(kid if isinstance(kid, str) else None)
            if key is None:
                raise jwt.InvalidKeyError("unknown key")
            # The key's algorithm, not the token's claim of one.
            return jwt.decode(token, key.key, algorithms=[key.algorithm_name],
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
    if not USER_ID.fullmatch(user_id):
        raise ValueError("user id must match [A-Za-z0-9_-]{1,64}")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_dev_secret, algorithm="HS256")
