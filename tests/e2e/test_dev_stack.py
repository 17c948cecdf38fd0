"""`hairfluencer dev` itself, on its SQLite default: API, worker and beat write
at once while several selfies go through presign → PUT → confirm → ready."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET_MARKERS, fixture_bytes
from tests.integration.test_upload_flow import sha256_b64, with_gps_exif

HAIRFLUENCER = str(Path(sys.executable).with_name("hairfluencer"))


@contextmanager
def dev_stack(data_dir: Path, *options: str, **env_overrides: str) -> Iterator[dict[str, str]]:
    """`hairfluencer dev` (with any further `options`) on a free loopback port until the
    block ends: its base URL, a development token and its data directory (also used by
    tests/clients and tests/conformance)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "REDIS_URL", "S3_", "CELERY_"))}
    env.update(env_overrides)
    out = data_dir / "dev.out"
    with out.open("wb") as sink:
        command = [HAIRFLUENCER, "dev", "--port", "0", "--data-dir", str(data_dir),
                   "--fal-latency", "0.5", *options]
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                text = out.read_text(errors="replace")
                if "READY " in text or process.poll() is not None:
                    break
                time.sleep(0.5)
            text = out.read_text(errors="replace")
            assert "READY " in text, text[-3000:]
            base = re.search(r"READY (\S+)", text)[1]  # type: ignore[index]
            token = re.search(r"token\s+(\S+)", text)[1]  # type: ignore[index]
            metrics = " ".join(f"{name}={url}" for url, name in re.findall(
                r"metrics\s+(http://127\.0\.0\.1:\d+/metrics)\s+\((\S+)\)", text))
            yield {"base": base, "token": token, "data_dir": str(data_dir), "metrics": metrics}
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # Beat writes continuously during the test.
    with dev_stack(tmp_path_factory.mktemp("devstack"), BEAT_INTERVAL_SECONDS="1",
                   VALIDATION_STALE_SECONDS="2") as running:
        yield running


def _upload(stack: dict[str, str], data: bytes, content_type: str = "image/jpeg") -> dict:
    headers = {"Authorization": f"Bearer {stack['token']}", "Accept-Language": "es"}
    with httpx.Client(base_url=stack["base"], headers=headers, timeout=20) as api:
        issued = api.post("/v1/uploads/presign", json={
            "contentType": content_type, "contentLength": len(data),
            "checksum": sha256_b64(data)}).json()
        put = httpx.put(issued["uploadUrl"], content=data, headers=issued["headers"], timeout=20)
        assert put.status_code == 200, put.text
        confirm = api.post("/v1/uploads/confirm", json={"key": issued["key"]},
                           headers={"X-Request-ID": f"e2e-{issued['uploadId']}"})
        assert confirm.status_code == 202
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = api.get(f"/v1/uploads/{issued['uploadId']}")
            if response.status_code == 429:  # six clients polling share one user's rate
                time.sleep(int(response.headers["Retry-After"]))
                continue
            body = response.json()
            if body["status"] in ("ready", "rejected"):
                return body
            time.sleep(0.5)
    raise AssertionError(f"upload stuck: {body}")


def test_concurrent_uploads_through_the_dev_stack(stack):
    photo = with_gps_exif(fixture_bytes("astronaut.jpg"))
    junk = os.urandom(4096)
    with ThreadPoolExecutor(max_workers=6) as pool:
        good = [pool.submit(_upload, stack, photo) for _ in range(5)]
        bad = pool.submit(_upload, stack, junk)
        results = [f.result() for f in good]
        rejected = bad.result()
    assert [r["status"] for r in results] == ["ready"] * 5
    assert rejected["status"] == "rejected"
    assert rejected["rejection"]["code"] == "upload.undecodable"
    assert rejected["rejection"]["message"].startswith("No pudimos leer")

    data_dir = Path(stack["data_dir"])
    db = sqlite3.connect(data_dir / "hairfluencer.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    actions = dict(db.execute("SELECT action, count(*) FROM audit_events GROUP BY action"))
    assert actions["upload.validated"] == 5 and actions["upload.rejected"] == 1
    # beat ran its tasks against the same SQLite file meanwhile
    assert "maintenance.purge_raw_uploads" in (data_dir / "logs" / "worker-maintenance.log").read_text()
    # the request's correlation id travelled with the validation task
    validation_log = (data_dir / "logs" / "worker-validation.log").read_text()
    for body in results:
        assert f'"correlation_id": "e2e-{body["uploadId"]}"' in validation_log
    for log_file in (data_dir / "logs").glob("*.log"):
        text = log_file.read_text(errors="replace")
        assert "database is locked" not in text
        for marker in SECRET_MARKERS:
            assert marker not in text, f"{marker} in {log_file.name}"


def test_ready_and_metrics(stack):
    assert httpx.get(f"{stack['base']}/readyz").json()["checks"] == {
        "database": "ok", "redis": "ok", "storage": "ok"}
    # Every process group prints its own endpoint, as separate hosts would have one;
    # the API's public port carries none.
    from shared.core.pools import POOLS

    urls = dict(entry.split("=", 1) for entry in stack["metrics"].split())
    assert set(urls) == {"api", "hooks", "beat", *(
        f"worker-{name}" for pool in POOLS for name in pool.process_names())}
    assert "upload_issued_total" in httpx.get(urls["api"]).text
    assert "celery_queue_length" in httpx.get(urls["api"]).text
    assert httpx.get(f"{stack['base']}/metrics").status_code == 404
    for name, url in urls.items():
        assert httpx.get(url).status_code == 200, name


def test_try_on_offline_through_the_dev_stack(stack, tmp_path):
    """The README's demonstration: `hairfluencer try-on` against `hairfluencer dev`."""
    from PIL import Image

    out = tmp_path / "result.jpg"
    result = subprocess.run(
        [HAIRFLUENCER, "try-on", str(Path(__file__).parents[1] / "fixtures" / "astronaut.jpg"),
         "--style", "bob", "--base-url", stack["base"], "--token", stack["token"],
         "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"job\s+[0-9a-f-]{36}", result.stdout)
    assert Image.open(out).size == (512, 512)
    data_dir = Path(stack["data_dir"])
    db = sqlite3.connect(data_dir / "hairfluencer.sqlite3")
    status, key = db.execute("SELECT status, result_key FROM try_ons").fetchone()
    assert status == "succeeded" and key.startswith("results/dev-user/")
    # completion came by the emulator's signed webhook, not by polling, to the webhook
    # listener of its own (the user-facing API never saw it)
    hooks_log = (data_dir / "logs" / "hooks.log").read_text()
    assert '"POST /v1/webhooks/fal"' in hooks_log
    assert '"POST /v1/webhooks/fal"' not in (data_dir / "logs" / "api.log").read_text()
    assert "token=" not in hooks_log  # the webhook's HMAC token is not logged
    for log_file in (data_dir / "logs").glob("*.log"):
        for marker in SECRET_MARKERS:
            assert marker not in log_file.read_text(errors="replace"), log_file.name


def _raw_request(base: str, head: str) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (no client library trims what is sent)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode("ascii"))
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    raw_headers, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode().split(": ", 1) for line in raw_headers.split(b"\r\n"))
    return int(status_line.split()[1]), headers, body


PAD = "a" * 9000


@pytest.mark.parametrize(("head", "status", "code"), [
    # a query longer than gunicorn's request line limit (4094 bytes), on the webhook
    # whose query carries a per-job token, which must not reach a log
    (f"POST /v1/webhooks/fal?token=wh-secret-{PAD} HTTP/1.1\r\nHost: x\r\n\r\n", 414,
     "request.uri_too_long"),
    (f"GET /v1/hairstyles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PAD}\r\n\r\n", 431,
     "request.headers_too_large"),
    # malformed HTTP: gunicorn would echo the request line, token and all, and log it
    ("POST /v1/webhooks/fal?token=wh-secret-1 HTTP/1.1 junk\r\nHost: x\r\n\r\n", 400,
     "request.invalid"),
    ("GET /v1/hairstyles HTTP/1.1\r\nHost: x\r\nBad Header: wh-secret-2\r\n\r\n", 400,
     "request.invalid"),
])
def test_the_http_server_refuses_in_the_error_envelope(stack, head, status, code):
    """What gunicorn refuses before the app reads it is answered as documented:
    the `Error` envelope of docs/openapi.json, with X-Request-ID, and nothing of the
    request in the body or the log."""
    import jsonschema

    document = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    got, headers, body = _raw_request(stack["base"], head)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)
    jsonschema.validate(error, {"$ref": "#/components/schemas/Error",
                                "components": document["components"]})
    assert error["error"]["code"] == code
    assert error["error"]["correlationId"] == headers["X-Request-ID"]
    assert code in document["paths"]["/v1/hairstyles"]["get"]["responses"][str(status)][
        "x-error-codes"]
    assert b"wh-secret" not in body
    assert "wh-secret" not in (Path(stack["data_dir"]) / "logs" / "api.log").read_text()


def _flower_login(stack: dict[str, str]) -> tuple[str, tuple[str, str]]:
    """Flower's URL and login as `hairfluencer dev` printed them."""
    text = (Path(stack["data_dir"]) / "dev.out").read_text(errors="replace")
    url = re.search(r"^ *Flower +(http://127\.0\.0\.1:\d+)(?:\s|$)", text, re.M)
    login = re.search(r"^Flower login: user (\S+) password (\S+)$", text, re.M)
    assert url and login, text[-3000:]
    return url[1], (login[1], login[2])


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_flower_shows_the_workers_and_a_finished_task(stack):
    """Flower, started by the dev stack on loopback behind basic auth, lists the
    workers and their queues and shows the validation of an upload as SUCCESS."""
    from shared.core.pools import POOLS
    from shared.core.task_names import ALL_QUEUES, VALIDATE_UPLOAD

    url, (user, password) = _flower_login(stack)
    assert password not in url and user not in url  # the login is never in the URL
    # Without the login (or with a wrong one) neither the API nor the UI answers:
    # Flower can revoke tasks and shut workers down.
    for path in ("/api/workers", "/api/tasks", "/"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 401, path
    assert httpx.get(f"{url}/api/workers", auth=(user, password + "x"),
                     timeout=10).status_code == 401
    assert httpx.post(f"{url}/api/task/revoke/00000000-0000-0000-0000-000000000000",
                      timeout=10).status_code == 401
    if address := _non_loopback_address():  # listening on loopback only
        with pytest.raises(OSError):
            socket.create_connection((address, int(url.rsplit(":", 1)[1])), timeout=2).close()

    with httpx.Client(base_url=url, auth=(user, password), timeout=15) as flower:
        workers = flower.get("/api/workers", params={"refresh": "true"}).json()
        # every worker process of every pool (fal: one per core), all queues served
        expected = sum(pool.processes_per_host() for pool in POOLS)
        assert len(workers) == expected, f"Flower sees {sorted(workers)}"
        served = {queue["name"] for worker in workers.values()
                  for queue in worker["active_queues"]}
        assert served == set(ALL_QUEUES)

        upload = _upload(stack, fixture_bytes("astronaut.jpg"))
        assert upload["status"] == "ready"
        deadline = time.monotonic() + 30  # task events reach Flower asynchronously
        while True:
            tasks = flower.get("/api/tasks", params={"taskname": VALIDATE_UPLOAD,
                                                     "state": "SUCCESS"}).json()
            mine = [t for t in tasks.values() if upload["uploadId"] in (t.get("args") or "")]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # Flower's task list is built from the workers' task events (celeryconfig.py,
        # worker_send_task_events); Flower itself runs with --enable_events=False.
        assert mine, f"no SUCCESS {VALIDATE_UPLOAD} for the upload in Flower (task events off?): {tasks}"
        assert mine[0]["worker"] in workers
    for log_file in (Path(stack["data_dir"]) / "logs").glob("*.log"):
        assert password not in log_file.read_text(errors="replace"), log_file.name
