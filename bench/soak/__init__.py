"""The soak run (bench/soak_bench.py): the dev stack's processes under ten minutes of
steady mixed traffic from a second process, with per-minute errors and latencies and
the PSS of every process after the warm-up and at the end."""
