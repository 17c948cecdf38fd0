"""A user's audit trail as operations read it (`hairfluencer audit --user ID`).

Reading someone's trail is itself an access to their personal record, so every
read is recorded, in the same transaction, as an `audit.read` event of that user
naming who read it, the window asked for and how many events were shown.

The trail holds ids, codes, hashes and sizes only (shared/core/audit.py): no
audit event is written with a URL, a token or image bytes. Every value read is
still passed through the log redaction (shared/core/observability.redact) before
it leaves here, so that a future event written carelessly cannot put a signed URL
or a token on an operator's screen.

It lives in `privacy` rather than beside shared/core/audit.py because it checks
user ids with shared/storage/keys, which the layering forbids `core` to import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from shared.core import audit
from shared.core.observability import redact, redact_any
from shared.models import AuditEvent
from shared.services import Services
from shared.storage.keys import check_user_id

READ_ACTION = "audit.read"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# Who read a trail ends up in the trail itself: a short, plain name only.
READER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")  # matched whole
_AGE = re.compile(r"([0-9]{1,5})([mhd])")  # matched whole
_AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
SINCE_FORMS = "a date (2026-12-01), a time (2026-12-01T10:00:00Z) or an age (30m, 24h, 7d)"


@dataclass(frozen=True)
class TrailEvent:
    at: datetime
    action: str
    subject_type: str
    subject_id: str
    correlation_id: str | None
    details: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"at": _iso(self.at), "action": self.action,
                           "subject_type": self.subject_type, "subject_id": self.subject_id,
                           "correlation_id": self.correlation_id, "details": self.details},
                          sort_keys=True, ensure_ascii=False)

    def line(self) -> str:
        """time, action, subject, details (key=value, sorted), correlation id last."""
        details = " ".join(f"{key}={_plain(value)}" for key, value in sorted(self.details.items()))
        parts = [_iso(self.at), self.action, f"{self.subject_type}:{self.subject_id}", details]
        if self.correlation_id:
            parts.append(f"correlation_id={self.correlation_id}")
        # Redacted once more as a whole: a value that only looks like a credential
        # once joined (unlikely, but the screen is where it would leak) is caught too.
        return redact("  ".join(part for part in parts if part))


@dataclass(frozen=True)
class Trail:
    events: list[TrailEvent]  # oldest first
    truncated: bool  # older events in the window were left out (the newest `limit` shown)


def parse_since(text: str, now: datetime) -> datetime:
    """An aware UTC instant from a date (midnight UTC), an ISO time (UTC unless it
    carries an offset) or an age before `now`. ValueError names the forms."""
    text = text.strip()
    if match := _AGE.fullmatch(text):
        return now - timedelta(**{_AGE_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text)  # a bare date is its midnight
    except ValueError:
        raise ValueError(f"since must be {SINCE_FORMS}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def check_reader(reader: str) -> str:
    if not READER.fullmatch(reader):
        raise ValueError("reader must match [A-Za-z0-9._@+-]{1,64}")
    return reader


def trail(svc: Services, user_id: str, *, reader: str, since: datetime | None = None,
          limit: int = DEFAULT_LIMIT) -> Trail:
    """The user's events at or after `since` (all if None), oldest first; at most
    the newest `limit` of them. Records the read as `audit.read` in the same
    transaction: the read is not in what it returns, the next read shows it."""
    check_user_id(user_id)
    check_reader(reader)
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be an aware datetime")
    query = select(AuditEvent).where(AuditEvent.user_id == user_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    # The newest `limit` (one more to know whether any were left out), turned round.
    query = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit + 1)
    with svc.sessions.begin() as session:
        rows = list(session.scalars(query))
        truncated = len(rows) > limit
        events = [_event(row) for row in reversed(rows[:limit])]
        read: dict[str, Any] = {"reader": reader, "count": len(events), "truncated": truncated}
        if since is not None:
            read["since"] = _iso(since)
        audit.record(session, at=svc.clock(), user_id=user_id, action=READ_ACTION,
                     subject_type="user", subject_id=user_id, **read)
    return Trail(events, truncated)


def _event(row: AuditEvent) -> TrailEvent:
    details = redact_any(dict(row.details or {}))
    return TrailEvent(at=row.at, action=redact(row.action), subject_type=redact(row.subject_type),
                      subject_id=redact(row.subject_id),
                      correlation_id=redact(row.correlation_id) if row.correlation_id else None,
                      details=details)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> str:
    # Strings without spaces as they are; anything else as JSON, so a line stays
    # one line and splits on double spaces.
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
