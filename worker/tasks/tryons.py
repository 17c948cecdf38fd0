"""The steps of a try-on. Each is short: nothing here waits for fal. Follow-ups
(re-checks, retries with backoff, the deadline) are sent as new tasks with a
countdown."""

from __future__ import annotations

from typing import Any

from shared.core import task_names as names
from shared.fal.completions import Completion
from shared.tryons import completion, state, submission
from worker.base import STEP, AppTask, task


@task(names.RUN_TRYON, STEP)
def run_tryon(self: AppTask, job_id: str) -> int:
    return state.send(self.svc, submission.run(self.svc, job_id))


@task(names.POLL_TRYON, STEP)
def poll_tryon(self: AppTask, job_id: str, attempt: int, reschedule: bool = True) -> int:
    return state.send(self.svc, completion.poll(self.svc, job_id, attempt, reschedule=reschedule))


@task(names.COMPLETE_TRYON, STEP)
def complete_tryon(self: AppTask, job_id: str, attempt: int, reported: dict[str, Any]) -> int:
    return state.send(self.svc, completion.complete(self.svc, job_id, attempt,
                                                    Completion(**reported)))


@task(names.TRYON_DEADLINE, STEP)
def tryon_deadline(self: AppTask, job_id: str) -> int:
    return state.send(self.svc, state.enforce_deadline(self.svc, job_id))
