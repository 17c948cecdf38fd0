"""What the presign benchmark prints: the load summary (full vs bare, the prototype,
CPU per request) and the in-process profile."""

from __future__ import annotations

from typing import Any

from bench.common.report import print_table


def _ratio_row(full: dict[str, Any], bare: dict[str, Any], target_ratio: float,
               target_p99: float) -> dict[str, Any]:
    ratio = full["rps"] / bare["rps"] if bare["rps"] else None
    return {
        "worker": full["worker"], "connections": full["connections"],
        "bare_rps": bare["rps"], "bare_p50_ms": bare["p50_ms"], "bare_p99_ms": bare["p99_ms"],
        "full_rps": full["rps"], "full_p50_ms": full["p50_ms"], "full_p99_ms": full["p99_ms"],
        "ratio": round(ratio, 3) if ratio else None,
        "meets_target": bool(ratio and ratio >= target_ratio and full["p99_ms"] < target_p99),
        "full_cpu_us_per_request": full.get("cpu_us_per_request"),
        "bare_cpu_us_per_request": bare.get("cpu_us_per_request"),
        "full_non_2xx": full["non_2xx"], "rows_added": full.get("rows_added"),
        "full_requests": full.get("requests"),
    }


def _lean_columns(lean: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    return {"lean_rps": lean["rps"], "lean_p50_ms": lean["p50_ms"], "lean_p99_ms": lean["p99_ms"],
            "lean_ratio": round(lean["rps"] / bare["rps"], 3),
            "lean_cpu_us_per_request": lean.get("cpu_us_per_request"),
            "lean_non_2xx": lean["non_2xx"]}


def summarise(rows: list[dict[str, Any]], target_ratio: float, target_p99: float) -> list[dict[str, Any]]:
    out = []
    keyed = {(r["worker"], r["connections"], r["app"]): r for r in rows}
    for (worker, conns, app), full in keyed.items():
        if app != "full":
            continue
        bare = keyed[(worker, conns, "bare")]
        out.append(_ratio_row(full, bare, target_ratio, target_p99))
        lean = keyed.get((worker, conns, "lean"))
        if lean:
            out[-1].update(_lean_columns(lean, bare))
    print("\nfull-stack presign vs bare Flask (same gunicorn settings, same wrk load)")
    print_table([[s["worker"], s["connections"], f"{s['bare_rps']:.0f}", f"{s['bare_p50_ms']:.2f}",
                  f"{s['bare_p99_ms']:.2f}", f"{s['full_rps']:.0f}", f"{s['full_p50_ms']:.2f}",
                  f"{s['full_p99_ms']:.2f}", f"{s['ratio']:.1%}",
                  "yes" if s["meets_target"] else "no"] for s in out],
                ["worker", "conns", "bare req/s", "p50 ms", "p99 ms", "full req/s", "p50 ms",
                 "p99 ms", "full/bare", f">={target_ratio:.0%} & p99<{target_p99:.0f}ms"])
    if any("lean_rps" in x for x in out):
        print("\nPROTOTYPE lean path (bench/lean_app.py, NOT the app) vs the same bare runs")
        print_table([[x["worker"], x["connections"], f"{x['lean_rps']:.0f}", f"{x['lean_p50_ms']:.2f}",
                      f"{x['lean_p99_ms']:.2f}", f"{x['lean_ratio']:.1%}", x["lean_non_2xx"],
                      *[(x["lean_cpu_us_per_request"] or {}).get(k, "")
                        for k in ("gunicorn", "postgres", "redis")]]
                     for x in out if "lean_rps" in x],
                    ["worker", "conns", "lean req/s", "p50 ms", "p99 ms", "lean/bare", "non-2xx",
                     "cpu µs: gunicorn", "postgres", "redis"])
    print("\nCPU per full-stack request during the load (µs, all processes on the box)")
    print_table([[s["worker"], s["connections"],
                  *[s["full_cpu_us_per_request"].get(k, "")
                    for k in ("gunicorn", "postgres", "redis", "wrk", "other")],
                  *[s["bare_cpu_us_per_request"].get(k, "") for k in ("gunicorn", "wrk")]]
                 for s in out if s["full_cpu_us_per_request"]],
                ["worker", "conns", "full:gunicorn", "postgres", "redis", "wrk", "other",
                 "bare:gunicorn", "wrk"])
    return out


def print_profile(res: dict[str, Any], n: int) -> None:
    if "in_process_lean_prototype" in res:
        print(f"in-process PROTOTYPE lean path (bench/lean_app.py): mean "
              f"{res['in_process_lean_prototype']['mean_us']:.0f} µs")
    full, inst = res["in_process_full"], res["instrumented"]
    print(f"\nin-process, one presign through the Flask app (n={n}): "
          f"mean {full['mean_us']:.0f} µs, p50 {full['p50_us']:.0f} µs"
          f" (own CPU {full['cpu_us_per_request']:.0f} µs of which sys "
          f"{full['sys_us_per_request']:.0f}; machine busy {full['machine_busy_fraction']:.0%})"
          f"; bare Flask: mean {res['in_process_bare']['mean_us']:.0f} µs "
          f"(bare/full {res['in_process_ratio_bare_over_full']:.1%})")
    print(f"\nwhere one presign spends its time (instrumented, mean of {inst['n']}: wall "
          f"{inst['total_us']:.0f} µs, CPU {inst['total_cpu_us']:.0f} µs; other jobs on the "
          f"machine used {inst['noise']['other_cores']} cores meanwhile)")
    print_table([[k, f"{v:.0f}", f"{v / inst['total_us']:.0%}", f"{inst['breakdown_cpu_us'][k]:.0f}",
                  f"{inst['breakdown_cpu_us'][k] / inst['total_cpu_us']:.0%}"]
                 for k, v in sorted(inst["breakdown_us"].items(), key=lambda kv: -kv[1])],
                ["component", "wall µs", "share", "CPU µs", "share"])
    print()
    print_table([[k, f"{v:.0f}", f"{inst['detail_cpu_us'][k]:.0f}"]
                 for k, v in inst["detail_us"].items()], ["detail", "wall µs", "CPU µs"])
    print(f"\nRedis keys hit per presign: {res['redis']['keys_per_request']}")
    print(f"round trips per presign: Redis {res['redis']['round_trips_per_request']:.2f} "
          f"{res['redis']['commands_per_request']}, PostgreSQL "
          f"{res['postgres']['round_trips_per_request']:.2f} {res['postgres']['statements_per_request']}")
    smp = res["sampler"]
    print(f"\nwall-clock sampler, time by library (innermost non-stdlib frame; n={smp['n']}, "
          f"{smp['samples']} samples, {smp['wall_us_per_request']:.0f} µs/request)")
    print_table([[k, f"{v:.0f}", f"{smp['by_library_share'][k]:.0%}"]
                 for k, v in smp["by_library_us"].items() if smp["by_library_share"][k] >= 0.005],
                ["library", "µs", "share"])
    if "self_time_by_library_us" in res["pyinstrument"]:
        p = res["pyinstrument"]
        print(f"\npyinstrument self time by library (µs/request under pyinstrument, which "
              f"inflates call-heavy code; n={p['n']}; tree in {p['report_file']})")
        print_table([[k, f"{v:.0f}"] for k, v in p["self_time_by_library_us"].items()],
                    ["library", "µs"])
    print("\nwhat-if micro-benchmarks (NOT implemented in the app), mean µs")
    print_table([[k, f"{v['mean_us']:.0f}", f"{v['p99_us']:.0f}"]
                 for k, v in res["what_if_not_implemented"].items()], ["variant", "mean", "p99"])
