"""The worker pools, by kind of work: which queues each one consumes and how it runs
them, declared once.

The Procfile, compose.yaml and the dev stack write each pool's command out in full
(an operator reads them there); tests/unit/test_process_layout.py holds those literal
lists to this declaration. The fault suite and the benchmarks build their commands
from `worker_argv`. How each pool was chosen, with the measurements, is in
docs/operations.md ("Worker pools").

- validation: decoding untrusted images is CPU work that may run away. A prefork
  pool, one child per core (Celery's default concurrency), each child under an
  address-space limit (worker/app.py) and replaced after a number of tasks, so a
  slow leak in a decoder never accumulates.
- fal: submitting to fal and taking its answer in (webhook, status check, fetching
  and storing the result) is waiting on the network with short bursts of CPU: a
  threads pool, many at once, in one process per core (each process is one GIL).
  Celery's time limits do not run on threads, so every call made there carries its
  own timeout (shared/core/timeouts.py, and DB_STATEMENT_TIMEOUT_SECONDS for
  queries); its memory is bounded from outside
  (the container's or unit's limit), not by an address-space limit, which thread
  stacks and malloc arenas would exhaust long before real memory.
  Its queues are taken in priority order, completions (`tryons_done`) before
  submissions (`tryons`): under a burst the backlog forms in front of new work, and
  a job fal has finished is stored at once.
- maintenance: the beat's passes and erasures, one at a time, out of the way of
  user-facing work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shared.core.task_names import DEFAULT_QUEUE, QUEUES

# A task may hold one session and open a second (an audit write beside a job's
# row): every process gets this many connections beyond its concurrency.
DB_CONNECTION_HEADROOM = 2
# botocore's default HTTP pool per client: a process that runs more at once needs more.
S3_DEFAULT_POOL = 10

# How many tasks or requests this process runs at once. Its connection pools are
# sized to it: set by the worker's and gunicorn's start-up hooks, before any
# client of the process exists (worker/pool_setup.py, api/gunicorn_conf.py).
_process_concurrency = 1


def declare_process_concurrency(concurrency: int) -> None:
    global _process_concurrency
    _process_concurrency = max(1, concurrency)


def process_concurrency() -> int:
    return _process_concurrency


@dataclass(frozen=True)
class Pool:
    name: str
    queues: tuple[str, ...]
    kind: str  # Celery's -P: "prefork" or "threads"
    # None: one per core (Celery's default for prefork).
    concurrency: int | None
    max_tasks_per_child: int | None = None
    # Set in the environment the worker starts with (glibc reads it before Python runs).
    environment: tuple[tuple[str, str], ...] = ()
    # Worker processes of this pool on one host; None: one per core.
    processes: int | None = 1

    def processes_per_host(self) -> int:
        return self.processes or os.cpu_count() or 1

    def process_names(self) -> list[str]:
        """A name for each of its processes on a host: `fal-0`, `fal-1`; `maintenance`."""
        count = self.processes_per_host()
        return [self.name] if count == 1 else [f"{self.name}-{i}" for i in range(count)]

    def worker_argv(self, concurrency: int | None = None) -> list[str]:
        """`celery -A worker.app worker` arguments for this pool (`-n` is the caller's)."""
        argv = ["-Q", ",".join(self.queues), "-P", self.kind]
        chosen = concurrency or self.concurrency
        if chosen:
            argv += ["-c", str(chosen)]
        if self.max_tasks_per_child:
            argv += ["--max-tasks-per-child", str(self.max_tasks_per_child)]
        return argv


POOLS: tuple[Pool, ...] = (
    Pool("validation", ("uploads",), "prefork", None, max_tasks_per_child=200),
    # tryons_done first: a worker takes from its queues in this order (celeryconfig's
    # queue_order_strategy), so a finished job never waits behind new submissions.
    # Two malloc arenas: glibc would give each thread that contends one of its own
    # (up to 8 per core), and the footprint ratcheted up in steps as traffic peaks
    # woke more threads (docs/performance.md, "Soak").
    # One process per core, 8 threads each: a process is one GIL, so one process of
    # 16 threads used at most one core however many were free (docs/performance.md,
    # "Worker pools by kind": 1,000 try-ons 88 -> 64 s, stage 5a p99 4.1 -> 2.3 s).
    Pool("fal", ("tryons_done", "tryons"), "threads", 8, processes=None,
         environment=(("MALLOC_ARENA_MAX", "2"),)),
    Pool("maintenance", ("maintenance", DEFAULT_QUEUE), "prefork", 1, max_tasks_per_child=100),
)
POOL_BY_NAME = {pool.name: pool for pool in POOLS}


def pool_of(task_name: str) -> Pool:
    queue = QUEUES.get(task_name, DEFAULT_QUEUE)
    return next(pool for pool in POOLS if queue in pool.queues)


def db_pool_size(concurrency: int) -> tuple[int, int]:
    """(pool_size, max_overflow) for a process that runs `concurrency` tasks or
    requests at once: one connection each, plus the headroom, all kept open. No
    overflow: SQLAlchemy closes an overflow connection as soon as it is returned, so
    a task that needs its second connection would open a new one every time."""
    return max(1, concurrency) + DB_CONNECTION_HEADROOM, 0


def s3_pool_size() -> int:
    """HTTP connections each S3 client of this process keeps (urllib3 discards, and
    reconnects, beyond it)."""
    return max(S3_DEFAULT_POOL, _process_concurrency + DB_CONNECTION_HEADROOM)


def max_db_connections(kind: str, concurrency: int) -> int:
    """The most database connections a worker of this kind and concurrency opens:
    a prefork child runs one task at a time and has a pool of its own; a threads
    pool shares one among its threads."""
    per_process = sum(db_pool_size(1 if kind == "prefork" else concurrency))
    return per_process * (concurrency if kind == "prefork" else 1)
