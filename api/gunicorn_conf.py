"""gunicorn settings (`gunicorn -c python:api.gunicorn_conf api.wsgi:app`).

The access log names the path without its query string: the fal webhook's query
carries a per-job HMAC token, and no credential belongs in a log line.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.workers.gthread import ThreadWorker
from prometheus_client import multiprocess

from shared.core.config import get_settings
from shared.core.metrics_server import broker_queue_lengths, serve_metrics
from shared.core.pools import declare_process_concurrency

# Sends gunicorn's own 414 and 431 refusals in the API's error envelope.
worker_class = "api.gunicorn_worker.ApiWorker"
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
# Every outbound call's budget nests under this (docs/reliability.md, "Timeouts that
# nest"; tests/unit/core/test_timeouts.py keeps 5 s of margin): raise it first.
timeout = 30
graceful_timeout = 20
# gunicorn >= 25.1 opens a control socket for `gunicornc` (resize, reload, shut down)
# at one path per user: `web` and `hooks` on one host fought over it (the second
# logged an ERROR at every start), and a command could reach the wrong server.
# Processes are managed by the PaaS, compose or systemd, never by gunicornc.
control_socket_disable = True


def when_ready(server: Any) -> None:
    # With METRICS_PORT set, the master serves every worker's metrics (and the queue
    # lengths) on that port, off the published one: started here, before the first
    # worker is forked, it lives as long as the group (shared/core/metrics_server.py).
    settings = get_settings()
    if settings.metrics_port and (url := serve_metrics(settings, broker_queue_lengths())):
        server.log.info("Metrics at %s", url)  # the master's logging is gunicorn's


def child_exit(_server: Any, worker: Any) -> None:
    # Multi-process Prometheus metrics: drop a dead worker's live gauges.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def post_fork(server: Any, _worker: Any) -> None:
    # Before the worker loads the app: its database pool holds one connection per
    # request it serves at once (a sync worker one, a gthread worker its threads).
    threaded = issubclass(server.cfg.worker_class, ThreadWorker)
    declare_process_concurrency(server.cfg.threads if threaded else 1)
