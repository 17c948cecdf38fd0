"""Prometheus metrics. Labels are small closed sets (statuses, codes), never ids or URLs.

Every process writes them into its process group's PROMETHEUS_MULTIPROC_DIR (read
by prometheus-client itself); with METRICS_PORT set, the group's main process serves
their sum (shared/core/metrics_server.py), else the API's /metrics serves its own
directory (which the dev stack shares with its workers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Histogram

from shared.core.task_names import ALL_QUEUES

UPLOAD_ISSUED = Counter("upload_issued_total", "Presigned upload URLs issued")
UPLOAD_CONFIRMED = Counter("upload_confirmed_total", "Uploads confirmed by the client")
UPLOAD_VALIDATED = Counter("upload_validation_total", "Deep validation outcomes",
                           ["outcome"])
UPLOAD_REJECTED = Counter("upload_rejected_total", "Uploads rejected, by code", ["code"])
API_ERRORS = Counter("api_errors_total", "Error responses, by code", ["code"])
TASK_DURATION = Histogram("task_duration_seconds", "Celery task run time", ["task"])
# `queue`: the queue the message was delivered from (its routing key), one of ALL_QUEUES.
QUEUE_LATENCY = Histogram("task_queue_latency_seconds",
                          "Time from enqueue to a worker starting the task, by task and queue",
                          ["task", "queue"],
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
FAL_SUCCESS = Counter("fal_request_success_total", "fal.ai requests that succeeded")
FAL_DURATION = Histogram("fal_request_duration_seconds", "fal.ai request duration",
                         buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120))
JOB_OUTCOMES = Counter("tryon_jobs_total", "Try-on jobs finished, by outcome", ["outcome"])
# From acceptance (POST /v1/try-ons) to the job's end, as the user waits for it.
JOB_DURATION = Histogram("tryon_job_duration_seconds",
                         "Try-on jobs from acceptance to their end, by outcome", ["outcome"],
                         buckets=(1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 900))
# `code`: our own closed fal.* codes (shared/fal/gateway.py), never fal's open error types.
FAL_FAILURES = Counter("fal_request_failure_total",
                       "fal.ai requests that failed (submit, status, result), by our code",
                       ["code"])
# What the beat's passes did (worker/tasks/maintenance.py), by pass: work taken over
# or sent again by a reconciler, and rows or objects removed by a retention pass.
RECONCILER_ACTIONS = Counter("reconciler_actions_total",
                             "Work a reconciler pass took over or sent again", ["pass_name"])
RETENTION_DELETIONS = Counter("retention_deletions_total",
                              "Rows and objects a retention pass removed", ["pass_name"])
FAL_SUBMITS = Counter("fal_submit_total", "fal submissions, by result (accepted, failed, "
                      "in_doubt: the answer was lost after the request went out)", ["result"])
# Each submission fal ran for a job on top of the one whose result it used, counted
# once, when we learn of it. `cause`: no_webhook, lease_lapsed (shared/tryons/
# submission.py); superseded_finished, superseded_in_backoff, superseded_after_success
# (an earlier attempt's result arrived while a later one was at fal, while the job
# waited to retry a later one, after a later one's result was used: completion.py).
FAL_DOUBLE_SUBMISSIONS = Counter(
    "fal_double_submissions_total", "A job submitted to fal again while an earlier submission "
    "of it was, or may have been, accepted", ["cause"])
TRYON_TAKEOVERS = Counter("tryon_claims_taken_over_total",
                          "Try-on claims taken over after their lease ended (claimant died)")
VALIDATION_TAKEOVERS = Counter("upload_validation_taken_over_total",
                               "Validations claimed again after their claimant died")
ERASURES = Counter("user_erasures_total", "Erasure runs, by outcome", ["outcome"])


def queue_label(delivery_info: Mapping[str, Any] | None) -> str:
    """The queue a message came from, as a label of a closed set: one of ours, else
    `other` (a routing key is whatever the sender wrote)."""
    queue = (delivery_info or {}).get("routing_key")
    return queue if queue in ALL_QUEUES else "other"
