"""A TypeScript client generated from the document the running system serves
(openapi-typescript types, openapi-fetch calls; tests/clients/ts) drives the app's
whole flow against that system with Node. `tsc` type-checks the flow against the
generated types first (no output on an error), so a contract change fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

pytestmark = pytest.mark.clients

PROJECT = Path(__file__).resolve().parent / "ts"


def npm(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(["npm", *args], cwd=PROJECT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"npm {' '.join(args)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def built(served_spec: Path) -> Path:
    if not shutil.which("npm"):
        pytest.fail("npm is not installed (Node 20+ is needed for tests/clients)")
    npm("ci", "--no-audit", "--no-fund", "--prefer-offline")  # exactly package-lock.json
    for stale in (PROJECT / "dist", PROJECT / "src" / "schema.ts"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    npm("run", "-s", "generate", env={"SPEC": str(served_spec)})
    npm("run", "-s", "build")  # tsc: type errors fail the build and emit nothing
    return PROJECT / "dist" / "flow.js"


def test_generated_typescript_client_drives_the_flow(built, system):
    result = subprocess.run(
        ["node", str(built)], cwd=PROJECT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "HF_BASE_URL": system["base"], "HF_TOKEN": system["token"],
             "HF_IMAGE": str(FIXTURES / "astronaut.jpg")})
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["putStatus"] == 200
    assert summary["uploadStatus"] == "ready"
    assert summary["repeatedJobId"] == summary["jobId"]  # the same Idempotency-Key: the same job
    assert summary["jobStatus"] == "succeeded"
    assert summary["notModified"] >= 1 and summary["unchangedStatus"] == 304
    assert summary["resultStatus"] == 200 and summary["resultIsJpeg"]
    error = summary["error"]
    assert error["status"] == 404 and error["code"] == "upload.not_found"
    assert error["messageKey"] == "errors.upload.not_found"
    assert error["message"] and error["retriable"] is False and error["correlationId"]
