"""The OpenAPI document: valid, the reviewed copy in docs/openapi.json, every error
answer our envelope, and the conventions it states (405 with Allow)."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from api.app import create_app
from api.contract import OPERATION_ERRORS, document_text
from shared.core.config import Settings
from shared.services import Services

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
REGENERATE = "regenerate it: .venv/bin/hairfluencer openapi > docs/openapi.json"


def served(settings: Settings, svc: Services) -> dict:
    app = create_app(settings, svc, configure_logs=False)
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_the_served_document_is_a_valid_openapi_document(settings, svc):
    validate(served(settings, svc))


def test_the_served_document_is_the_committed_one(settings, svc):
    document = served(settings, svc)
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert document == committed, f"docs/openapi.json differs from /openapi.json; {REGENERATE}"
    app = create_app(settings, svc, configure_logs=False)
    assert COMMITTED.read_text(encoding="utf-8") == document_text(app), REGENERATE


def test_every_error_answer_is_the_envelope_with_its_codes(settings, svc):
    document = served(settings, svc)
    operations = {(method, path): op for path, item in document["paths"].items()
                  for method, op in item.items() if method != "parameters"}
    assert set(operations) == set(OPERATION_ERRORS)
    for key, operation in operations.items():
        errors = {s: r for s, r in operation["responses"].items() if int(s) >= 400}
        for response in errors.values():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, key
            assert response["x-error-codes"], key
        public = key == ("post", "/v1/webhooks/fal")
        assert operation["security"] == ([] if public else [{"bearerAuth": []}]), key
    error = document["components"]["schemas"]["ErrorObject"]
    assert set(error["properties"]) == {"code", "messageKey", "message", "retriable",
                                        "correlationId", "details"}
    assert error["additionalProperties"] is False


def test_a_method_not_allowed_names_the_allowed_ones(settings, svc):
    app = create_app(settings, svc, configure_logs=False)
    response = app.test_client().get("/v1/webhooks/fal")
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert response.get_json()["error"]["code"] == "request.method_not_allowed"


def test_every_body_has_an_example_that_its_schema_accepts(settings, svc):
    from openapi_schema_validator import OAS30Validator

    document = served(settings, svc)
    schemas = document["components"]["schemas"]

    def check(schema: dict, example: object) -> None:
        # The document's components ride along, so that its $refs resolve.
        OAS30Validator({**schema, "components": document["components"]}).validate(example)

    for name, schema in schemas.items():
        if name == "PaginationMetadata":  # flask-smorest's own, referenced by nothing
            continue
        assert "example" in schema, f"{name} has no example (api/examples.py)"
        check({"$ref": f"#/components/schemas/{name}"}, schema["example"])
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            bodies = [operation.get("requestBody", {})] + list(operation["responses"].values())
            for body in bodies:
                for media in body.get("content", {}).values():
                    ref = media["schema"]["$ref"].rsplit("/", 1)[1]
                    assert "example" in media or "example" in schemas[ref], (method, path)
                    if "example" in media:
                        check(media["schema"], media["example"])
