"""The baseline for bench/presign_bench.py: a bare Flask JSON endpoint.

Same route, same request (JSON body + Authorization header, which it ignores), a
small JSON answer; no auth, no Redis, no database, no signing, no marshmallow.
Run as `gunicorn --pythonpath bench bare_app:app`.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/v1/uploads/presign")
def presign() -> tuple[object, int]:
    body = request.get_json(silent=True) or {}
    return jsonify({"ok": True, "contentType": body.get("contentType")}), 201


@app.get("/healthz")
def healthz() -> object:
    return jsonify({"status": "ok"})
