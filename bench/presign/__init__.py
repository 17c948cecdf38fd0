"""The presign benchmark (bench/presign_bench.py): full stack vs bare Flask under wrk,
then one presign profiled in-process."""
