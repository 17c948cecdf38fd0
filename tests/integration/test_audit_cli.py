"""`hairfluencer audit` against PostgreSQL, after a real upload and try-on (LocalStack
S3, the fal emulator): the user's trail in order, no signed URL or token in what it
prints, and the read recorded in the database."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from api import cli
from shared.models import AuditEvent
from tests.conftest import fixture_bytes
from tests.integration.test_tryons import ready_job
from tests.integration.test_upload_flow import upload_ready

LEAKS = ("X-Amz-", "token=", "Signature=", "Bearer", "http://", "https://")


def test_an_operator_reads_a_users_trail_without_urls_or_tokens(
        client, auth, svc, dispatch, settings, monkeypatch):
    _, upload, job_id, job = ready_job(client, auth, svc, dispatch, user="vera")
    assert job.status == "succeeded", job.error_code
    other = upload_ready(client, auth("walt"), fixture_bytes("astronaut.jpg"))
    # The command builds its own Services from the settings, as in production.
    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    runner = CliRunner()

    done = runner.invoke(cli.main, ["audit", "--user", "vera", "--operator", "ops-ann"])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    actions = [line.split("  ")[1] for line in lines]
    assert actions[:3] == ["upload.issued", "upload.confirmed", "upload.validated"]
    assert {"tryon.created", "tryon.invoked", "tryon.succeeded"} <= set(actions)
    assert actions.index("tryon.created") < actions.index("tryon.invoked") \
        < actions.index("tryon.succeeded")
    assert any(f"try_on:{job_id}" in line for line in lines)
    assert any(f"upload:{upload['uploadId']}" in line for line in lines)
    assert other["uploadId"] not in done.output  # walt's events are not vera's
    as_json = runner.invoke(cli.main, ["audit", "--user", "vera", "--since", "1h", "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["action"] for r in rows] == [*actions, "audit.read"]
    for output in (done.output, as_json.output):
        for leak in LEAKS:
            assert leak not in output, (leak, output)

    with svc.sessions() as session:
        recorded = [e.details for e in session.scalars(select(AuditEvent).where(
            AuditEvent.user_id == "vera", AuditEvent.action == "audit.read").order_by(
            AuditEvent.id))]
    assert recorded[0] == {"reader": "ops-ann", "count": len(lines), "truncated": False}
    assert recorded[1]["count"] == len(lines) + 1 and "since" in recorded[1]


def test_bad_input_against_the_real_database_is_a_usage_error(svc, settings, monkeypatch):
    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    runner = CliRunner()
    for args in (["--user", "../etc"], ["--user", "vera", "--since", "soon"]):
        done = runner.invoke(cli.main, ["audit", *args])
        assert done.exit_code == 2 and "Traceback" not in done.output, done.output
    with svc.sessions() as session:
        assert list(session.scalars(select(AuditEvent))) == []
