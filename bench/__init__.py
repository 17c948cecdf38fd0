"""The benchmarks (plain scripts, not part of the test suite); see docs/performance.md.

Entry points: `presign_bench.py`, `validation_bench.py`, `tryon_bench.py`, run as
`python bench/<name>.py` from the repository root. Their code is in the packages
`common` (machine, /proc accounting, wrk, stats, reports, launching), `presign`,
`validation` and `tryon`. `bare_app.py` and `lean_app.py` are the presign baselines.
"""
