"""What the soak prints: a line per minute while it runs, then the tables."""

from __future__ import annotations

from typing import Any

from bench.common.report import print_table
from bench.soak.flow import KINDS

SHORT = {"presign": "presign", "put": "PUT", "confirm": "confirm", "upload poll": "up-poll",
         "try-on": "try-on", "try-on poll": "job-poll", "result": "result"}


PG, GEN = "postgres (this database)", "load generator"


def _cores(cpu: dict[str, Any], part: str) -> float | None:
    return cpu["cores"].get(part)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}"


def print_minute(row: dict[str, Any]) -> None:
    kinds = " ".join(f"{SHORT[k]} {row['by_kind'][k]}" for k in KINDS)
    a, c, p = row["api_ms"], row["cpu"], row["pss"]
    t = row["tryons"]
    print(f"  [{row['from_s']:4.0f}-{row['to_s']:4.0f} s] {row['requests']} requests ({kinds}); "
          f"errors {row['errors']} ({_pct(row['error_rate'])} %); API p50/p95/p99 "
          f"{a['p50']}/{a['p95']}/{a['p99']} ms; try-ons {t} done p50 "
          f"{row['tryon_done_s']['p50']} s; machine {c['machine_busy_pct']} % busy "
          f"(cores: app {c['app_cores']}, stand-ins {c['stand_in_cores']}, postgres "
          f"{_cores(c, PG)}, generator {_cores(c, GEN)}, other {c['other_cores']}); "
          f"PSS app {p['app_mib']} MiB, all {p['all_mib']} MiB", flush=True)


def minute_rows(minutes: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for m in minutes:
        a, t = m["api_ms"], m["tryons"]
        rows.append([f"{m['from_s']:.0f}-{m['to_s']:.0f}", m["requests"],
                     *[m["by_kind"][k] for k in KINDS], m["errors"], _pct(m["error_rate"]),
                     a["p50"], a["p95"], a["p99"], t.get("succeeded", 0),
                     sum(v for k, v in t.items() if k != "succeeded"),
                     m["tryon_done_s"]["p50"], m["tryon_done_s"]["p95"],
                     m["cpu"]["app_cores"], m["cpu"]["stand_in_cores"], _cores(m["cpu"], PG),
                     _cores(m["cpu"], GEN), m["cpu"]["other_cores"], m["cpu"]["machine_busy_pct"],
                     m["pss"]["app_mib"], m["pss"]["all_mib"]])
    return rows


MINUTE_HEADER = ["s", "requests", *[SHORT[k] for k in KINDS], "errors", "err %",
                 "API p50 ms", "p95", "p99", "try-ons ok", "not ok", "done p50 s", "p95 s",
                 "app cores", "stand-ins", "postgres", "generator", "other", "machine %",
                 "PSS app MiB", "PSS all MiB"]


def print_results(result: dict[str, Any]) -> None:
    print("\nper minute (requests counted when they ended; API = requests to our API, not S3):")
    print_table(minute_rows(result["minutes"]), MINUTE_HEADER)
    if result.get("drain"):
        d = result["drain"]
        print(f"  drain (no new sessions): {d['requests']} requests, {d['errors']} errors, "
              f"try-ons {d['tryons']}")
    if result.get("by_kind"):
        print("\nwhole run, per kind of request (ms):")
        print_table([[k, v["n"], v["errors"], v["p50"], v["p95"], v["p99"], v["max"]]
                     for k, v in result["by_kind"].items()],
                    ["kind", "n", "errors", "p50", "p95", "p99", "max"])
    w = result.get("whole_run")
    if w:
        print(f"  whole run: {w['requests']} requests, {w['errors']} errors "
              f"({_pct(w['error_rate'])} %) {w['errors_by']}; uploads {w['uploads']}; "
              f"try-ons {w['tryons']}")
    if result.get("generator"):
        g = result["generator"]
        print(f"  generator: {g['sessions_started']} sessions started, "
              f"{g['sessions_skipped_all_busy']} skipped (all busy); ends {g['session_ends']}")
    growth = result.get("pss_growth")
    if growth:
        print_pss(result, growth)


def print_pss(result: dict[str, Any], growth: dict[str, Any]) -> None:
    print(f"\nPSS by process group (MiB): after the {result['settings']['warmup_s']:.0f} s "
          f"warm-up and at the end of the traffic (both under load), idle after it:")
    idle: dict[str, float] = {}
    for row in result["pss"].get("idle_after", {}).get("sample", []):
        idle[row["group"]] = idle.get(row["group"], 0) + row["pss_kib"] / 1024
    rows = [[name + (" (stand-in)" if g["stand_in"] else ""), "/".join(map(str, g["processes"])),
             g["warmup_mib"], g["end_mib"], g["growth_pct"], round(idle.get(name, 0.0), 1)]
            for name, g in growth["groups"].items()]
    for name, t in growth["total"].items():
        rows.append([f"TOTAL {name.removesuffix('_mib')}", "", t["warmup_mib"], t["end_mib"],
                     t["growth_pct"], ""])
    print_table(rows, ["group", "processes", "warm-up", "end", "growth %", "idle after"])
    print("\nper process (MiB):")
    print_table([[r["group"], r["role"], r["pid"], r["warmup_mib"], r["end_mib"], r["growth_pct"]]
                 for r in result["pss_per_process"]],
                ["group", "role", "pid", "warm-up", "end", "growth %"])
    verdict = "within" if growth["within_limit"] else "OVER"
    print(f"\napplication PSS growth: {growth['total']['app_mib']['growth_pct']} % in total; "
          f"{verdict} the {growth['limit_pct']:.0f} % bound (application groups over it: "
          f"{growth['app_groups_over_limit'] or 'none'})", flush=True)
