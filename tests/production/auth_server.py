"""The app's auth server as production's API meets it: an RS256 key of its own, its
JWKS served over HTTP on loopback, and user tokens signed with that key (what
Better Auth's JWT plugin issues). Production takes no other token."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

JWKS_PATH = "/.well-known/jwks.json"
AUDIENCE = "hairfluencer-api"


class AuthServer:
    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        public = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        document = json.dumps({"keys": [{**public, "kid": self.kid, "use": "sig",
                                          "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                found = self.path == JWKS_PATH
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(document)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self.jwks_url = self.issuer + JWKS_PATH
        self.audience = AUDIENCE

    def token(self, user_id: str, ttl: int = 3600) -> str:
        now = int(time.time())
        return jwt.encode({"sub": user_id, "iss": self.issuer, "aud": self.audience,
                           "iat": now, "exp": now + ttl}, self._key, algorithm="RS256",
                          headers={"kid": self.kid})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
