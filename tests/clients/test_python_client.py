"""A Python client generated (openapi-python-client) from the document the running
system serves drives the app's whole flow against that system: presign, PUT with
the returned headers, confirm, poll until ready, a try-on with an Idempotency-Key
(repeated: the same job), polling it with If-None-Match, the download, and an
error decoded into its typed envelope.

Operations are found by method and path in the generated code, and request bodies
built with the generated models' `from_dict`, so renaming an operationId or a
schema does not break the test; a change of the contract does."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import time
import types
import typing
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fixture_bytes
from tests.integration.test_upload_flow import sha256_b64

pytestmark = pytest.mark.clients

GENERATOR = str(Path(sys.executable).with_name("openapi-python-client"))
PACKAGE = "hairfluencer_client"
POLL_SECONDS = 90


@pytest.fixture(scope="module")
def generated(served_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    root = tmp_path_factory.mktemp("python-client")
    config = root / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter runs over the generated code
    result = subprocess.run(
        [GENERATOR, "generate", "--path", str(served_spec), "--output-path", str(root / PACKAGE),
         "--meta", "none", "--config", str(config), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sys.path.insert(0, str(root))
    try:
        package = importlib.import_module(PACKAGE)
        for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}."):
            importlib.import_module(info.name)  # every generated module imports
        yield package
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def operation(package: types.ModuleType, method: str, path: str) -> types.ModuleType:
    """The generated module of the operation `method path` (by its request, not its name)."""
    wanted = re.compile(rf'"method": "{method.lower()}",\s*"url": "{re.escape(path)}"')
    found = [module for name, module in sys.modules.items()
             if name.startswith(f"{package.__name__}.api.") and hasattr(module, "_get_kwargs")
             and wanted.search(inspect.getsource(module))]
    assert len(found) == 1, f"{method} {path}: {len(found)} generated operations"
    return found[0]


def body(module: types.ModuleType, data: dict[str, Any]) -> Any:
    """The operation's request model (or the member of its oneOf) that `data` is."""
    annotation = inspect.signature(module._get_kwargs).parameters["body"].annotation
    members = typing.get_args(annotation) or (annotation,)
    for model in members:
        try:
            built = model.from_dict(data)
        except (KeyError, TypeError, ValueError):
            continue
        if built.to_dict() == data:
            return built
    raise AssertionError(f"no request model of {module.__name__} takes {data}")


def call(module: types.ModuleType, client: Any, **kwargs: Any) -> Any:
    """sync_detailed, waiting out 429 (Retry-After) like a well-behaved client."""
    while True:
        response = module.sync_detailed(client=client, **kwargs)
        if response.status_code != 429:
            return response
        time.sleep(int(response.headers.get("Retry-After", "1")))


def test_generated_python_client_drives_the_flow(generated, system):
    pkg = generated
    client = pkg.AuthenticatedClient(base_url=system["base"], token=system["token"],
                                      timeout=httpx.Timeout(30), raise_on_unexpected_status=True)
    presign = operation(pkg, "post", "/v1/uploads/presign")
    confirm = operation(pkg, "post", "/v1/uploads/confirm")
    get_upload = operation(pkg, "get", "/v1/uploads/{upload_id}")
    start = operation(pkg, "post", "/v1/try-ons")
    get_job = operation(pkg, "get", "/v1/try-ons/{job_id}")
    models = importlib.import_module(f"{PACKAGE}.models")

    photo = fixture_bytes("astronaut.jpg")
    issued = call(presign, client, body=body(presign, {
        "contentType": "image/jpeg", "contentLength": len(photo), "checksum": sha256_b64(photo)}))
    assert issued.status_code == 201, issued.content[:500]
    issued = issued.parsed
    assert isinstance(issued, models.PresignResponse)
    # The PUT goes to storage, not to our API: exactly the headers the presign returned.
    put = httpx.put(issued.upload_url, content=photo, headers=issued.headers.to_dict(), timeout=30)
    assert put.status_code == 200, put.text[:500]

    confirmed = call(confirm, client, body=body(confirm, {"key": issued.key}))
    assert confirmed.status_code == 202, confirmed.content[:500]

    deadline = time.monotonic() + POLL_SECONDS
    while True:
        upload = call(get_upload, client, upload_id=issued.upload_id)
        assert upload.status_code == 200, upload.content[:500]
        assert isinstance(upload.parsed, models.Upload)
        if upload.parsed.status in ("ready", "rejected") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert upload.parsed.status == "ready", upload.parsed.to_dict()

    # A try-on with an Idempotency-Key, twice: the same job.
    key = f"py-{uuid.uuid4()}"
    request = {"uploadId": issued.upload_id, "hairstyleId": "bob", "locale": "en"}
    first, again = (call(start, client, body=body(start, request), idempotency_key=key)
                    for _ in range(2))
    assert first.status_code == 202, first.content[:500]
    assert again.status_code == 202, again.content[:500]
    assert isinstance(first.parsed, models.TryOn)
    assert again.parsed.job_id == first.parsed.job_id

    # Poll with If-None-Match: 304 while nothing changed, 200 with a new ETag when it did.
    job_id, etag, not_modified = first.parsed.job_id, None, 0
    deadline = time.monotonic() + POLL_SECONDS
    while time.monotonic() < deadline:
        kwargs = {"if_none_match": etag} if etag else {}
        polled = call(get_job, client, job_id=job_id, **kwargs)
        if polled.status_code == 304:
            not_modified += 1
            assert not polled.content
        else:
            assert polled.status_code == 200, polled.content[:500]
            assert polled.headers["ETag"] != etag
            etag, job = polled.headers["ETag"], polled.parsed
            assert isinstance(job, models.TryOn)
            if str(job.status) in ("succeeded", "failed"):
                break
        time.sleep(0.2)
    assert str(job.status) == "succeeded", job.to_dict()
    assert not_modified >= 1, "no 304 while the job ran"
    polled = call(get_job, client, job_id=job_id, if_none_match=etag)
    assert polled.status_code == 304

    result = httpx.get(job.result_url, timeout=30)
    assert result.status_code == 200
    assert result.content[:3] == b"\xff\xd8\xff"  # a JPEG

    # An error, decoded into the typed envelope.
    missing = call(get_upload, client, upload_id=str(uuid.uuid4()))
    assert missing.status_code == 404
    envelope = missing.parsed
    assert isinstance(envelope, models.Error), type(envelope)
    error = envelope.error
    assert isinstance(error, models.ErrorObject), type(error)
    assert error.code == "upload.not_found"
    assert error.message and error.message_key and error.retriable is False
    assert error.correlation_id
