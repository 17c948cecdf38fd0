"""The beat's safety net for try-ons: every job whose `due_at` passed with nobody
acting on it is handed to the step that moves it on, and a job past its bounds is
ended, whatever its own step does (a run that keeps raising before its claim would
otherwise be sent again forever and hold its selfie past its deadline).

It is also how the deadline is kept: a job past `deadline_at` gets a
`tryons.deadline` task, which cancels its fal request and fails it, on the fal
pool's threads (a burst of them while fal is down is canceled side by side, not one
after another in the beat's pass). Sending one such task per job when it was
submitted, to be held until its ETA, cost every job a publish and a receive in the
busiest pool and kept ~2 minutes of them in each fal worker's memory; here the
deadline is kept within one reconcile interval (RECONCILE_INTERVAL_SECONDS, 5 s).

A job whose next message is still in the broker (waiting in a backlog, or held by
a live worker: shared/core/broker_view.py) is left to it: re-sending work that is
only waiting multiplies a backlog exactly when it is longest. Only a message that
is gone (never sent, lost with Redis, held by a dead worker) is sent again. Where
the broker cannot be read, age alone decides, as a duplicate costs a no-op run."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from shared.core.broker_view import Pending
from shared.core.db import execute_dml
from shared.core.task_names import COMPLETE_TRYON, POLL_TRYON, RUN_TRYON, TRYON_DEADLINE
from shared.models import JobStatus, TryOn
from shared.services import Services
from shared.tryons.state import SILENT_AFTER, FollowUp, fail, past_deadline
from shared.tryons.submission import past_submit_bound

# A queued job whose run was due this long ago, and whose message is not in the
# broker, has lost it: send it again (the grace covers a send still under way).
QUEUED_GRACE = timedelta(seconds=10)
RECONCILE_BATCH = 500
# The messages that move a job on: its run, and for a submitted job, the answer;
# and the one that ends a job past its deadline.
MOVING_TASKS = (RUN_TRYON, POLL_TRYON, COMPLETE_TRYON, TRYON_DEADLINE)
ANSWERS = (POLL_TRYON, COMPLETE_TRYON)


def reconcile(svc: Services) -> list[FollowUp]:
    """Every job whose `due_at` passed with nobody acting on it: a queued job's run is
    sent again, a lapsed claim is handed to `run` (which takes it over), a submitted
    job is asked about, a job past its deadline gets its `tryons.deadline` (unless
    one waits in the broker), and one never accepted by fal past `submit_bound` is
    failed."""
    if not _due_jobs(svc, svc.clock()):
        return []  # the usual pass: the broker (perhaps a long backlog) is not read
    # Read before the jobs: a message taken meanwhile shows in the job's state.
    in_broker = svc.messages_in_broker(MOVING_TASKS) or {}
    now = svc.clock()
    jobs = _due_jobs(svc, now)
    follow: list[FollowUp] = []
    resent: list[str] = []
    asked: list[str] = []
    for job in jobs:
        if past_deadline(job, now):
            if job.id not in in_broker.get(TRYON_DEADLINE, ()):
                follow.append(FollowUp(TRYON_DEADLINE, (job.id,)))
        elif past_submit_bound(svc, job, now):
            # Fenced by the attempt: a claim taken meanwhile is left to its run.
            fail(svc, job, "fal.timeout", attempt=job.attempt,
                 detail="not accepted by fal within its bound")
        elif _on_its_way(job, in_broker):
            continue
        elif job.status == JobStatus.QUEUED:
            if job.due_at is None or job.due_at < now - QUEUED_GRACE:
                follow.append(FollowUp(RUN_TRYON, (job.id,)))
                resent.append(job.id)
        elif not job.fal_request_id:
            follow.append(FollowUp(RUN_TRYON, (job.id,)))  # the claim's lease ended
        else:
            follow.append(FollowUp(POLL_TRYON, (job.id, job.attempt, False)))
            asked.append(job.id)
    # Marked, so that the next pass waits for these messages instead of doubling them.
    with svc.sessions.begin() as session:
        if resent:
            execute_dml(session, update(TryOn).where(TryOn.id.in_(resent),
                                                TryOn.status == JobStatus.QUEUED).values(due_at=now))
        if asked:
            execute_dml(session, update(TryOn).where(TryOn.id.in_(asked),
                                                TryOn.status == JobStatus.PROCESSING)
                            .values(due_at=now + SILENT_AFTER))
    return follow


def _due_jobs(svc: Services, now: datetime) -> list[TryOn]:
    with svc.sessions() as session:
        return list(session.scalars(select(TryOn).where(
            TryOn.status.in_(JobStatus.IN_FLIGHT),
            or_(TryOn.due_at.is_(None), TryOn.due_at < now, TryOn.deadline_at < now))
            .order_by(TryOn.due_at).limit(RECONCILE_BATCH)))


def _on_its_way(job: TryOn, in_broker: Pending) -> bool:
    """The message that moves this job on is in the broker."""
    if job.status == JobStatus.QUEUED or not job.fal_request_id:
        return job.id in in_broker.get(RUN_TRYON, ())
    return any(job.id in in_broker.get(task, ()) for task in ANSWERS)
