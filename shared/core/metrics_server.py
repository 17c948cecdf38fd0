"""Each process group's own scrape endpoint, for a Prometheus that reaches the API and
the workers as separate hosts (METRICS_PORT, METRICS_ADDRESS).

A process group is one main process and the children it forks: gunicorn's master
and its workers, a Celery worker and its pool (prefork children, or threads in the
main process), beat. Every process of a group writes its metrics into the group's
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode); the main process
serves what that directory holds from a daemon thread started before its first
child exists, so the endpoint lives exactly as long as the group. Workers are
scraped rather than pushing to a gateway: a group that is down shows as `up == 0`
instead of as the last values it pushed, and nothing has to expire them.

The directory belongs to its group. As the group starts, the files of processes
that no longer run (a previous run's) are removed, so counters start from zero with
the group, as Prometheus expects of a restarted target; the counters of children
that end while the group runs are kept (the group's sums must not go down), only
their live gauges are dropped (`forget_process`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from celery import Celery
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.core.config import Settings
from shared.core.tasks import queue_lengths

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# This process's server, also seen by the children it forks afterwards (an embedded
# beat, `celery worker -B`), which must not try to open the group's port again.
_server: WSGIServer | None = None


def multiprocess_dir() -> Path | None:
    """The group's metrics directory. prometheus-client reads the variable itself as
    it is imported (and from then on writes every value into files there); it is read
    here only to aggregate those files."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """A registry holding the sum of every process's files in `directory`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry


def forget_process(pid: int) -> None:
    """A process of the group has ended: drop its live gauges (its counters stay)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


class QueueLengths(Collector):
    """`celery_queue_length{queue}`, read from the broker at scrape time (a gauge that
    no process holds: any API process answers it alike). A broker that does not answer
    leaves it out and sets `celery_queue_length_up` to 0, never failing the scrape."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("celery_queue_length_up",
                               "1 if the broker answered the queue-length read")
        try:
            lengths = self.read()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail on the broker
            log.warning("queue lengths unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        gauge = GaugeMetricFamily("celery_queue_length", "Messages waiting in a queue",
                                  labels=["queue"])
        for queue, length in lengths.items():
            gauge.add_metric([queue], length)
        yield gauge
        yield up


def broker_queue_lengths() -> QueueLengths:
    """Queue lengths for a main process that forks children after it starts serving
    (gunicorn's master): read through a Celery app of the scrape thread's own, so a
    child forked while a scrape runs never inherits a lock or a connection of the
    application object it sends tasks with."""
    app = Celery("hairfluencer-metrics", set_as_current=False)
    app.config_from_object("celeryconfig")
    return QueueLengths(partial(queue_lengths, app))


def serve_metrics(settings: Settings, *collectors: Collector) -> str | None:
    """Serve this process group's metrics (and `collectors`) on METRICS_PORT; call it
    in the group's main process as it starts, before any child is forked. Its URL, or
    None when no port is set, or when the endpoint cannot be served: logged as an
    error, and the group goes on working (metrics are not worth its work; the scraper
    sees the target down)."""
    global _server
    if not settings.metrics_port or _server is not None:
        return None
    directory = multiprocess_dir()
    if directory is None:
        # Without it each prefork child or gunicorn worker counts in its own memory,
        # and this endpoint would show none of it.
        log.error("metrics endpoint not started: METRICS_PORT needs %s, a directory of "
                  "this process group's own", MULTIPROC_ENV)
        return None
    removed = remove_finished_processes_files(directory)
    registry = multiprocess_registry(directory)
    for collector in collectors:
        registry.register(collector)
    try:
        _server, _ = start_http_server(settings.metrics_port, settings.metrics_address,
                                       registry=registry)
    except OSError as exc:
        log.error("metrics endpoint not started on %s:%d: %s", settings.metrics_address,
                  settings.metrics_port, exc)
        return None
    url = f"http://{settings.metrics_address}:{settings.metrics_port}/metrics"
    log.info("metrics on %s (from %s; files of %d ended processes removed)", url, directory,
             removed)
    return url


def stop_metrics_server() -> None:
    """Close this process's endpoint (tests; otherwise it ends with its process)."""
    global _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None


def remove_finished_processes_files(directory: Path) -> int:
    """Remove the files of processes that no longer run: at the group's start they are
    a previous run's (a restarted container keeps its /tmp). Files of a running
    process are kept, whoever it is."""
    removed = 0
    for path in directory.glob("*.db"):
        pid = _pid_of(path)
        if pid is not None and pid != os.getpid() and not _running(pid):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _pid_of(path: Path) -> int | None:
    # prometheus-client names them `<kind>_<pid>.db` (counter_12.db, gauge_livesum_12.db).
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
