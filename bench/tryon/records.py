"""What the database recorded for a run's jobs, and each job's stages from it, the
emulator's request log and the worker's task spans."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import psycopg

from bench.common.database import pg_url
from bench.common.stats import summary_ms


def job_rows(db: str, since: datetime) -> list[dict[str, Any]]:
    with psycopg.connect(pg_url(db), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT t.id, t.status, t.error_code, t.attempt, t.created_at, t.completed_at, "
            "t.fal_request_id, t.first_submitted_at, "
            "(SELECT min(a.at) FROM audit_events a WHERE a.subject_type = 'try_on' "
            " AND a.subject_id = t.id AND a.action = 'tryon.invoked') AS invoked_at "
            "FROM try_ons t WHERE t.created_at >= %s", (since,))
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _emulator_stages(st: dict[str, list[float]], r: dict[str, Any], e: dict[str, Any], inv: float,
                     done: float, complete_spans: dict[str, tuple[float, float]]) -> None:
    sub, started, fin = e["submitted_at"], e["started_at"], e["completed_at"]
    st["2 invoked -> fal accepted (claim, sign, submit)"].append(sub - inv)
    if not (started and fin):
        return
    st["3 fal accepted -> fal done (emulator)"].append(fin - sub)
    ok = [d for d in e.get("webhook_deliveries", []) if d.get("status_code") == 200]
    if not ok:
        return
    first = min(d["at"] for d in ok)
    st["4 fal done -> webhook sent (emulator pool)"].append(first - fin)
    st["5 webhook sent -> succeeded"].append(done - first)
    if r["id"] in complete_spans:
        start, end = complete_spans[r["id"]]
        st["5a webhook sent -> tryons.complete starts (API, broker, queue)"].append(start - first)
        st["5b tryons.complete run time"].append(end - start)


def stage_profile(rows: list[dict[str, Any]], emu: dict[str, Any], latency: float,
                  spans: dict[str, dict[str, tuple[float, float]]]) -> dict[str, Any]:
    """Per-job stage durations (seconds lists summarised in ms)."""
    reqs = emu.get("requests", {})
    run_spans, complete_spans = spans.get("tryons.run", {}), spans.get("tryons.complete", {})
    st: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["status"] != "succeeded" or r["completed_at"] is None:
            continue
        created, done = r["created_at"].timestamp(), r["completed_at"].timestamp()
        st["total (created -> succeeded)"].append(done - created)
        st["overhead (total - emulator latency)"].append(done - created - latency)
        inv = r["invoked_at"].timestamp() if r["invoked_at"] else None
        if inv is None:
            continue
        st["1 created -> invoked (wait for tryons.run)"].append(inv - created)
        st["invoked -> succeeded - latency"].append(done - inv - latency)
        if r["id"] in run_spans:
            start, end = run_spans[r["id"]]
            st["  tryons.run task run time"].append(end - start)
        e = reqs.get(r["fal_request_id"] or "")
        if e:
            _emulator_stages(st, r, e, inv, done, complete_spans)
    return {k: summary_ms(v) for k, v in sorted(st.items(), key=lambda kv: kv[0].strip())}
