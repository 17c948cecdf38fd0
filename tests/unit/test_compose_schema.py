"""compose.yaml is held to the Compose Specification's own JSON schema, vendored in
devstack/compose_spec/ (its package, version and licence are in the README there), so
a misspelt key or a wrong type fails CI here, not on an operator's `docker compose up`
(issue 16, point 7). The file is checked as written, before `${…}` interpolation, as
editors and pre-commit hooks check it: the schema accepts strings where compose
interpolates."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENDORED = REPO / "devstack" / "compose_spec"


@cache
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((VENDORED / "compose-spec.json").read_text())
    # The draft the schema declares, never a silent fallback to another one.
    validator_class = jsonschema.validators.validator_for(schema, default=None)
    assert validator_class is not None, f"unknown $schema {schema.get('$schema')!r}"
    validator_class.check_schema(schema)
    return validator_class(schema)


def compose_file() -> dict[str, Any]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def problems(document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
            for error in compose_validator().iter_errors(document)]


def test_compose_yaml_follows_the_compose_specification():
    assert problems(compose_file()) == []


def test_the_vendored_schema_is_the_one_its_readme_records():
    recorded = re.search(r"\| sha256 \| `([0-9a-f]{64})`", (VENDORED / "README.md").read_text())
    assert recorded, "devstack/compose_spec/README.md records no sha256 for compose-spec.json"
    assert hashlib.sha256((VENDORED / "compose-spec.json").read_bytes()).hexdigest() == recorded[1]
    assert compose_validator().META_SCHEMA["$id"].startswith("https://json-schema.org/draft/2020-12/")


def _misspelt_key(service: dict[str, Any]) -> None:
    service["comand"] = service.pop("command", ["true"])


def _wrong_type(service: dict[str, Any]) -> None:
    service["depends_on"] = "postgres"  # a list or a mapping, never a bare name


def _unknown_condition(service: dict[str, Any]) -> None:
    service["depends_on"] = {"postgres": {"condition": "service_finished"}}


@pytest.mark.parametrize("spoil", [_misspelt_key, _wrong_type, _unknown_condition])
def test_the_check_refuses_a_spoilt_service(spoil):
    spoilt = copy.deepcopy(compose_file())
    name, service = next(iter(spoilt["services"].items()))
    spoil(service)
    found = problems(spoilt)
    assert found, f"{spoil.__name__} on service {name!r} passed the schema"
    assert all(problem.startswith(f"services/{name}") for problem in found), found


def test_the_schema_knows_build_dockerfile_inline():
    def with_build(build: dict[str, Any]) -> dict[str, Any]:
        return {"services": {"app": {"build": build}}}

    assert problems(with_build({"context": ".", "dockerfile_inline": "FROM scratch\n"})) == []
    # Checked, not merely let through: a wrong type and a near miss are refused.
    assert problems(with_build({"context": ".", "dockerfile_inline": ["FROM scratch"]}))
    assert problems(with_build({"context": ".", "dockerfile_inlined": "FROM scratch\n"}))
