"""Operations endpoints and the OpenAPI document."""

from __future__ import annotations


def test_healthz_readyz_metrics(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}
    assert "upload_issued_total" in client.get("/metrics").get_data(as_text=True)


def test_readyz_reports_a_dependency_down(app, client):
    from dataclasses import replace

    svc = app.extensions["hairfluencer"].svc
    original = svc.settings
    svc.settings = replace(original, uploads_bucket="no-such-bucket-here")
    try:
        response = client.get("/readyz")
    finally:
        svc.settings = original
    assert response.status_code == 503
    assert response.get_json()["checks"]["storage"] == "unavailable"
    assert "no-such-bucket" not in response.get_data(as_text=True)


def test_openapi_documents_the_upload_routes(client):
    spec = client.get("/openapi.json").get_json()
    assert {"/v1/uploads/presign", "/v1/uploads/confirm", "/v1/uploads",
            "/v1/uploads/{upload_id}"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 200


def test_request_id_is_echoed_or_made(client, auth):
    response = client.get("/v1/uploads", headers=auth(X_Request_ID="abc-123"))
    assert response.headers["X-Request-ID"] == "abc-123"
    made = client.get("/v1/uploads", headers=auth(X_Request_ID="bad id with spaces"))
    assert made.headers["X-Request-ID"] not in ("", "bad id with spaces")
