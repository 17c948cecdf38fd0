"""The beat's passes (celeryconfig.beat_schedule): reconcilers that take over work
nobody holds, and retention. Each is one domain call, registered under its name."""

from __future__ import annotations

from collections.abc import Callable

from shared.core import metrics
from shared.core import task_names as names
from shared.privacy import erasure, orphans
from shared.services import Services
from shared.tryons import reconcile, results, state
from shared.tryons import retention as tryon_retention
from shared.uploads import retention as upload_retention
from worker.base import MAINTENANCE, AppTask, task


def _upload_retention(svc: Services) -> int:
    return (upload_retention.expire_unconfirmed(svc) + upload_retention.delete_past_retention(svc)
            + upload_retention.purge_dead_upload_rows(svc))


def _tryon_retention(svc: Services) -> int:
    tryon_retention.release_idempotency_keys(svc)
    return tryon_retention.delete_expired_results(svc)


PASSES: dict[str, Callable[[Services], int]] = {
    names.RECONCILE_TRYONS: lambda svc: state.send(svc, reconcile.reconcile(svc)),
    names.RESEND_STALE_VALIDATIONS: upload_retention.resend_stale_validations,
    names.RESUME_ERASURES: erasure.resume_unfinished,
    names.REPAIR_RESULT_TAGS: results.repair_tags,
    names.PURGE_RAW_UPLOADS: upload_retention.purge_raw_objects,
    names.UPLOAD_RETENTION: _upload_retention,
    names.TRYON_RETENTION: _tryon_retention,
    names.REMOVE_ORPHANS: orphans.remove_orphans,
}


# Passes whose count is work taken over or sent again; the others count removals.
RECONCILERS = {names.RECONCILE_TRYONS, names.RESEND_STALE_VALIDATIONS, names.RESUME_ERASURES,
               names.REPAIR_RESULT_TAGS}


def _register(name: str, run: Callable[[Services], int]) -> None:
    counter = metrics.RECONCILER_ACTIONS if name in RECONCILERS else metrics.RETENTION_DELETIONS
    label = name.rpartition(".")[2]

    def beat_pass(self: AppTask) -> int:
        done = run(self.svc)
        counter.labels(pass_name=label).inc(done)
        return done

    beat_pass.__name__ = beat_pass.__qualname__ = name.rpartition(".")[2]
    task(name, MAINTENANCE)(beat_pass)


for _name, _run in PASSES.items():
    _register(_name, _run)
