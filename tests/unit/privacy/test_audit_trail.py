"""A user's audit trail for operations (shared/privacy/audit_trail.py and
`hairfluencer audit`): only that user's events, oldest first, the --since window,
no URL or token on screen, and every read recorded as `audit.read`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from api import cli
from shared.core import audit
from shared.models import AuditEvent
from shared.privacy.audit_trail import READ_ACTION, parse_since, trail
from shared.storage.keys import InvalidKey
from tests.conftest import make_settings
from tests.unit.harness import Harness

SIGNED = ("https://s3.example/hf-up/uploads/alice/x.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIA%2F20300107&X-Amz-Signature=deadbeef")


def reads(harness: Harness, user: str) -> list[dict]:
    with harness.svc.sessions() as session:
        return [e.details for e in session.scalars(select(AuditEvent).where(
            AuditEvent.user_id == user, AuditEvent.action == READ_ACTION).order_by(AuditEvent.id))]


def event_count(harness: Harness) -> int:
    with harness.svc.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_a_trail_holds_only_that_users_events_oldest_first_and_the_read_is_recorded(
        harness: Harness):
    alice_upload = harness.ready_upload("alice")
    harness.advance(60)
    harness.ready_upload("bob")
    harness.advance(60)
    job = harness.start_job("alice", alice_upload)

    read = trail(harness.svc, "alice", reader="ops-ann")
    assert [(e.action, e.subject_id) for e in read.events] == [
        ("upload.issued", alice_upload.id), ("upload.confirmed", alice_upload.id),
        ("upload.validated", alice_upload.id), ("tryon.created", job.id)]
    assert [e.at for e in read.events] == sorted(e.at for e in read.events)
    assert read.truncated is False
    assert read.events[-1].details == {"upload_id": alice_upload.id, "hairstyle_id": "bob"}
    # The read is recorded for alice, not shown in the trail it read; bob is untouched.
    assert reads(harness, "alice") == [{"reader": "ops-ann", "count": 4, "truncated": False}]
    assert reads(harness, "bob") == []
    # The next read shows the previous one.
    again = trail(harness.svc, "alice", reader="ops-bo")
    assert [e.action for e in again.events][-1] == READ_ACTION
    assert again.events[-1].details["reader"] == "ops-ann"
    assert [r["reader"] for r in reads(harness, "alice")] == ["ops-ann", "ops-bo"]


def test_since_keeps_the_events_at_or_after_it(harness: Harness):
    first = harness.ready_upload("alice")
    cut = harness.advance(hours=2)
    second = harness.ready_upload("alice")

    read = trail(harness.svc, "alice", reader="ops", since=cut)
    assert {e.subject_id for e in read.events} == {second.id}
    assert len(read.events) == 3  # issued, confirmed, validated: the boundary included
    assert reads(harness, "alice")[-1] == {"reader": "ops", "count": 3, "truncated": False,
                                           "since": cut.isoformat().replace("+00:00", "Z")}
    whole = trail(harness.svc, "alice", reader="ops")
    assert {e.subject_id for e in whole.events} == {first.id, second.id, "alice"}


def test_a_limit_shows_the_newest_events_oldest_first_and_says_it_cut(harness: Harness):
    upload = harness.ready_upload("alice")
    read = trail(harness.svc, "alice", reader="ops", limit=2)
    assert [e.action for e in read.events] == ["upload.confirmed", "upload.validated"]
    assert read.truncated is True
    assert reads(harness, "alice")[-1]["truncated"] is True
    assert all(e.subject_id == upload.id for e in read.events)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
    ("2026-12-01T10:30:00Z", datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
    ("2026-12-01T10:30:00", datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
    ("2026-12-01T12:30:00+02:00", datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
    ("30m", datetime(2030, 1, 7, 8, 30, tzinfo=UTC)),
    ("24h", datetime(2030, 1, 6, 9, 0, tzinfo=UTC)),
    ("7d", datetime(2029, 12, 31, 9, 0, tzinfo=UTC)),
])
def test_since_reads_dates_times_and_ages(text: str, expected: datetime):
    now = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
    parsed = parse_since(text, now)
    assert parsed == expected and parsed.tzinfo is not None


@pytest.mark.parametrize("text", ["", "yesterday", "7", "7w", "-1d", "2026-13-01", "24 h",
                                  "1234567d", "2026-12-01 garbage"])
def test_since_refuses_anything_else(text: str):
    with pytest.raises(ValueError, match="since must be"):
        parse_since(text, datetime(2030, 1, 7, tzinfo=UTC))


def test_invalid_input_is_refused_and_records_nothing(harness: Harness):
    harness.ready_upload("alice")
    before = event_count(harness)
    for user in ("", "a/b", "alice\n", "x" * 65, "al ice"):
        with pytest.raises(InvalidKey):
            trail(harness.svc, user, reader="ops")
    for reader in ("", "ann smith", "ann\n", "r" * 65):
        with pytest.raises(ValueError, match="reader"):
            trail(harness.svc, "alice", reader=reader)
    for limit in (0, 10_001):
        with pytest.raises(ValueError, match="limit"):
            trail(harness.svc, "alice", reader="ops", limit=limit)
    with pytest.raises(ValueError, match="aware"):
        trail(harness.svc, "alice", reader="ops", since=datetime(2030, 1, 1))
    assert event_count(harness) == before


def test_nothing_on_screen_carries_a_signed_url_or_token(harness: Harness):
    """Audit events are written with ids and codes only; were one ever written with
    a signed URL or a token, the trail would still show it redacted."""
    with harness.svc.sessions.begin() as session:
        audit.record(session, at=harness.clock(), user_id="alice", action="upload.issued",
                     subject_type="upload", subject_id="u1", url=SIGNED,
                     nested={"link": SIGNED, "auth": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJh"
                             "bGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"},
                     webhook="https://api.example/v1/fal/webhook?token=s3cr3t")
    (event,) = trail(harness.svc, "alice", reader="ops").events
    shown = [event.line(), event.to_json()]
    for text in shown:
        assert "X-Amz-" not in text and "s3cr3t" not in text and "eyJ" not in text, text
        assert "[redacted]" in text
    assert json.loads(event.to_json())["subject_id"] == "u1"


def test_a_real_flows_trail_is_ids_and_codes_only(harness: Harness):
    """What the code really writes, through a succeeded try-on: no URL at all."""
    job = harness.succeeded_job("alice")
    harness.advance(timedelta(minutes=1))
    events = trail(harness.svc, "alice", reader="ops").events
    assert {"upload.issued", "upload.validated", "tryon.created", "tryon.invoked",
            "tryon.succeeded"} <= {e.action for e in events}
    assert any(e.subject_id == job.id for e in events)
    for event in events:
        assert "http" not in event.to_json() and "[redacted]" not in event.to_json()


# --- the command ---------------------------------------------------------------

@pytest.fixture
def runner(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(cli, "get_settings", lambda: harness.svc.settings)
    monkeypatch.setattr(cli.Services, "from_settings", classmethod(lambda _cls, _s: harness.svc))
    return CliRunner()


def test_the_command_prints_one_line_per_event_and_records_its_operator(
        harness: Harness, runner: CliRunner):
    upload = harness.ready_upload("alice")
    done = runner.invoke(cli.main, ["audit", "--user", "alice", "--operator", "ops-ann"])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"2030-01-07T09:00:00Z  upload.issued  upload:{upload.id}  ")
    assert "content_type=image/jpeg" in lines[0]
    assert "3 events of alice; this read is recorded as audit.read by ops-ann" in done.stderr
    assert reads(harness, "alice") == [{"reader": "ops-ann", "count": 3, "truncated": False}]

    as_json = runner.invoke(cli.main, ["audit", "--user", "alice", "--json", "--since", "1h"])
    assert as_json.exit_code == 0, as_json.output
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["action"] for r in rows] == ["upload.issued", "upload.confirmed",
                                           "upload.validated", READ_ACTION]
    assert rows[-1]["details"]["reader"] == "ops-ann"


def test_the_default_operator_is_the_os_user(harness: Harness, runner: CliRunner,
                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli.getpass, "getuser", lambda: "deploy")
    assert runner.invoke(cli.main, ["audit", "--user", "alice"]).exit_code == 0
    monkeypatch.setattr(cli.getpass, "getuser", lambda: "we ird")  # not a plain name
    assert runner.invoke(cli.main, ["audit", "--user", "alice"]).exit_code == 0
    assert [r["reader"] for r in reads(harness, "alice")] == ["deploy", "unknown"]


@pytest.mark.parametrize(("args", "says"), [
    (["--user", "a/b"], "Invalid value for '--user'"),
    (["--user", ""], "Invalid value for '--user'"),
    ([], "Missing option '--user'"),
    (["--user", "alice", "--since", "last week"], "Invalid value for '--since'"),
    (["--user", "alice", "--since", "2026-02-30"], "Invalid value for '--since'"),
    (["--user", "alice", "--operator", "a b"], "Invalid value for '--operator'"),
    (["--user", "alice", "--limit", "0"], "Invalid value for '--limit'"),
])
def test_bad_input_is_a_usage_error_without_a_traceback(harness: Harness, runner: CliRunner,
                                                        args: list[str], says: str):
    harness.ready_upload("alice")
    before = event_count(harness)
    done = runner.invoke(cli.main, ["audit", *args])
    assert done.exit_code == 2, done.output
    assert says in done.output and "Traceback" not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)
    assert event_count(harness) == before


def test_an_unreachable_database_is_a_clear_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    missing = tmp_path / "no-such-dir" / "hf.sqlite3"
    monkeypatch.setattr(cli, "get_settings",
                        lambda: make_settings(database_url=f"sqlite:///{missing}"))
    done = CliRunner().invoke(cli.main, ["audit", "--user", "alice", "--operator", "ops"])
    assert done.exit_code == 1, done.output
    assert "cannot read the audit trail: database error (OperationalError)" in done.output
    assert "Traceback" not in done.output and str(missing) not in done.output
