"""The running system (`hairfluencer dev`: API, worker, beat, the fal emulator,
LocalStack S3, Redis) on loopback, once for the session, and the OpenAPI document
it serves, which the generated clients are built from."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_dev_stack import dev_stack

HAIRFLUENCER = str(Path(sys.executable).with_name("hairfluencer"))
STARTUP_SECONDS = 150


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """base URL, a development token and the data directory of a running stack."""
    with dev_stack(tmp_path_factory.mktemp("clients-stack")) as running:
        yield running


@pytest.fixture(scope="session")
def served_spec(system: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The document exactly as the running API serves it."""
    response = httpx.get(f"{system['base']}/openapi.json", timeout=20)
    assert response.status_code == 200, response.text[:500]
    document = response.json()
    assert document["paths"], "the served document has no paths"
    path = tmp_path_factory.mktemp("spec") / "openapi.json"
    path.write_text(json.dumps(document, indent=2))
    return path
