"""PSS samples summed by group, and their growth between two samples."""

from __future__ import annotations

from typing import Any

Sample = list[dict[str, Any]]  # processes.pss_sample


def by_group(sample: Sample) -> dict[str, dict[str, Any]]:
    """group -> {processes, pss_mib, stand_in}."""
    out: dict[str, dict[str, Any]] = {}
    for row in sample:
        g = out.setdefault(row["group"], {"processes": 0, "pss_kib": 0, "stand_in": row["stand_in"]})
        g["processes"] += 1
        g["pss_kib"] += row["pss_kib"]
    return {k: {"processes": v["processes"], "pss_mib": round(v["pss_kib"] / 1024, 1),
                "stand_in": v["stand_in"]} for k, v in sorted(out.items())}


def totals(sample: Sample) -> dict[str, float]:
    """MiB: the application's processes, the stand-ins (S3, fal, Redis), everything."""
    app = sum(r["pss_kib"] for r in sample if not r["stand_in"])
    stand_in = sum(r["pss_kib"] for r in sample if r["stand_in"])
    return {"app_mib": round(app / 1024, 1), "stand_ins_mib": round(stand_in / 1024, 1),
            "all_mib": round((app + stand_in) / 1024, 1)}


def _growth(before: float, after: float) -> float | None:
    return round((after - before) / before * 100, 1) if before else None


def growth(warm: Sample, end: Sample, limit_pct: float) -> dict[str, Any]:
    """Per group and in total, warm-up -> end: MiB and %; `within_limit` holds the
    application's groups and total to limit_pct (stand-ins are reported only)."""
    g0, g1 = by_group(warm), by_group(end)
    groups = {}
    for name in sorted(g0.keys() | g1.keys()):
        a, b = g0.get(name, {}).get("pss_mib", 0.0), g1.get(name, {}).get("pss_mib", 0.0)
        groups[name] = {"warmup_mib": a, "end_mib": b, "growth_pct": _growth(a, b),
                        "processes": [g0.get(name, {}).get("processes", 0),
                                      g1.get(name, {}).get("processes", 0)],
                        "stand_in": (g0.get(name) or g1.get(name) or {}).get("stand_in", False)}
    t0, t1 = totals(warm), totals(end)
    total = {k: {"warmup_mib": t0[k], "end_mib": t1[k], "growth_pct": _growth(t0[k], t1[k])}
             for k in t0}
    app_growths = [v["growth_pct"] for v in groups.values() if not v["stand_in"]]
    over = [k for k, v in groups.items() if not v["stand_in"]
            and (v["growth_pct"] is None or v["growth_pct"] > limit_pct)]
    app_total = total["app_mib"]["growth_pct"]
    return {"groups": groups, "total": total, "limit_pct": limit_pct,
            "app_groups_over_limit": over,
            "within_limit": bool(app_growths) and not over
            and app_total is not None and app_total <= limit_pct}


def per_process(warm: Sample, end: Sample) -> list[dict[str, Any]]:
    """One row per pid seen in either sample (a pool child replaced in between shows
    up twice, once with each sample empty)."""
    a = {r["pid"]: r for r in warm}
    b = {r["pid"]: r for r in end}
    rows = []
    for pid in sorted(a.keys() | b.keys(), key=lambda p: ((a.get(p) or b[p])["group"], p)):
        r = a.get(pid) or b[pid]
        w = a[pid]["pss_kib"] / 1024 if pid in a else None
        e = b[pid]["pss_kib"] / 1024 if pid in b else None
        rows.append({"group": r["group"], "role": r["role"], "pid": pid,
                     "warmup_mib": None if w is None else round(w, 1),
                     "end_mib": None if e is None else round(e, 1),
                     "growth_pct": _growth(w, e) if w is not None and e is not None else None})
    return rows
