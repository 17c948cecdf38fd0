"""Keeping a lease alive while work runs.

A row that a worker claims (a validation, an erasure) carries the claimant's name
and a lease time. The lease is short, so a claimant that died is noticed within
seconds, and a claimant that is alive renews it from a daemon thread for as long
as it works, however long that is. If renewal fails (the database is down) the
lease may lapse and a second worker may start the same work: every such step is
idempotent by the row's state, so that costs work, never correctness.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Calls `renew()` every `every` seconds until the block ends.

    `renew` returns False when the lease is no longer ours (another worker took
    it over); the keeper then stops renewing and `lost` says so.
    """

    def __init__(self, renew: Callable[[], bool], every: float, name: str = "lease") -> None:
        self._renew = renew
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-keeper", daemon=True)
        self.lost = False

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=self._every)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                if not self._renew():
                    self.lost = True
                    log.warning("lease lost to another worker")
                    return
            except Exception as exc:  # noqa: BLE001 - try again at the next beat
                log.warning("lease renewal failed (%s); retrying", type(exc).__name__)
