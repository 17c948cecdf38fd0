"""The try-on benchmark (bench/tryon_bench.py): 1,000 jobs in flight against the whole
stack in webhook mode, overhead at emulator latency 0, and an in-process profile."""
