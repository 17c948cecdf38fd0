"""The deep-validation benchmark (bench/validation_bench.py): inspect_and_decode +
sanitize on 12-megapixel selfies, in spawned processes."""
