"""What the benchmarks share: paths, machine info, /proc CPU accounting, waiting for a
quiet machine, wrk, small statistics, result files and tables, the database and the
environment and launch helpers of the servers they start."""
