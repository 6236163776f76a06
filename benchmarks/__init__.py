"""Benchmarks: perf_analyzer sweeps and load generators against whatever is running."""
