"""The reconcilers leave work alone whose message is still in the broker (waiting in a
backlog, or held by a live worker), and re-send only what is gone (issue 16): a
long healthy queue is never multiplied by re-sends."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta

from shared.core.broker_view import BrokerUnreadable, Pending
from shared.core.task_names import (
    COMPLETE_TRYON,
    POLL_TRYON,
    RUN_TRYON,
    TRYON_DEADLINE,
    VALIDATE_UPLOAD,
)
from shared.tryons.reconcile import QUEUED_GRACE, reconcile
from shared.tryons.state import SILENT_AFTER, enforce_deadline
from shared.uploads.retention import resend_stale_validations
from shared.uploads.use_cases import confirm
from tests.unit.harness import Harness


@dataclass
class BrokerHolding:
    """A broker view that answers with what the test says is in the broker."""

    held: Pending = field(default_factory=dict)
    unreadable: bool = False
    asked: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)

    def pending(self, queues: Collection[str], tasks: Collection[str]) -> Pending:
        self.asked.append((tuple(queues), tuple(tasks)))
        if self.unreadable:
            raise BrokerUnreadable("ConnectionError")
        return {task: ids for task, ids in self.held.items() if task in tasks}


def _with_broker(harness: Harness, broker: BrokerHolding) -> None:
    harness.svc.broker = broker  # type: ignore[assignment]


def test_a_queued_job_whose_run_waits_in_the_queue_is_not_sent_again(harness: Harness):
    job = harness.start_job()
    harness.dispatch.take()
    broker = BrokerHolding({RUN_TRYON: {job.id}})
    _with_broker(harness, broker)
    harness.advance(QUEUED_GRACE * 30)  # a long backlog
    assert reconcile(harness.svc) == []
    assert broker.asked == [(("tryons", "tryons_done"),
                             (RUN_TRYON, POLL_TRYON, COMPLETE_TRYON, TRYON_DEADLINE))]
    # its message is gone (Redis restarted empty, or a dead worker held it): sent again
    broker.held = {}
    follow = reconcile(harness.svc)
    assert [(f.task, f.args) for f in follow] == [(RUN_TRYON, (job.id,))]


def test_another_job_s_message_does_not_count(harness: Harness):
    job = harness.start_job()
    other = harness.start_job()
    harness.dispatch.take()
    _with_broker(harness, BrokerHolding({RUN_TRYON: {other.id}, POLL_TRYON: {job.id}}))
    harness.advance(QUEUED_GRACE + timedelta(seconds=1))
    # a poll message does not move a queued job on: only its run does
    assert [(f.task, f.args) for f in reconcile(harness.svc)] == [(RUN_TRYON, (job.id,))]


def test_a_submitted_job_whose_answer_waits_is_not_asked_about(harness: Harness):
    job, _, _ = harness.submitted_job()
    harness.dispatch.take()
    broker = BrokerHolding({COMPLETE_TRYON: {job.id}})  # fal's webhook came; completion waits
    _with_broker(harness, broker)
    harness.advance(SILENT_AFTER * 4)
    assert reconcile(harness.svc) == []
    broker.held = {RUN_TRYON: {job.id}}  # a stray run does not answer for it
    assert [(f.task, f.args) for f in reconcile(harness.svc)] == [(POLL_TRYON, (job.id, 1, False))]


def test_the_deadline_is_enforced_whatever_waits_in_the_broker(harness: Harness):
    job, _, _ = harness.submitted_job()
    broker = BrokerHolding({COMPLETE_TRYON: {job.id}})
    _with_broker(harness, broker)
    harness.advance(harness.svc.settings.fal_deadline_seconds + 1)
    assert [(f.task, f.args) for f in reconcile(harness.svc)] == [(TRYON_DEADLINE, (job.id,))]
    # Its deadline task waiting in a backlog is not sent again by the next pass.
    broker.held = {COMPLETE_TRYON: {job.id}, TRYON_DEADLINE: {job.id}}
    assert reconcile(harness.svc) == []
    enforce_deadline(harness.svc, job.id)
    assert harness.job(job.id).error_code == "fal.timeout"


def test_an_unreadable_broker_means_re_sending_by_age(harness: Harness):
    job = harness.start_job()
    harness.dispatch.take()
    _with_broker(harness, BrokerHolding({RUN_TRYON: {job.id}}, unreadable=True))
    harness.advance(QUEUED_GRACE + timedelta(seconds=1))
    assert [(f.task, f.args) for f in reconcile(harness.svc)] == [(RUN_TRYON, (job.id,))]


def _confirmed(harness: Harness) -> str:
    """An upload confirmed: validating, its validation sent (and forgotten here)."""
    issued, data = harness.issue()
    harness.put(issued, data)
    confirm(harness.svc, "alice", issued.upload.key)
    harness.dispatch.take()
    return issued.upload.id


def test_a_validation_waiting_in_the_queue_is_not_sent_again(harness: Harness):
    waiting, lost = _confirmed(harness), _confirmed(harness)
    _with_broker(harness, BrokerHolding({VALIDATE_UPLOAD: {waiting}}))
    harness.advance(harness.svc.settings.validation_stale_seconds + 1)
    assert resend_stale_validations(harness.svc) == 1
    assert [s.args for s in harness.dispatch.of(VALIDATE_UPLOAD)] == [(lost,)]
