"""The GPU check: staged here (``make gpu-prepare``), run in one call on a lent GPU machine
(``make gpu-check``), dry-run on CPU by the test suite. See benchmarks/README.md, "GPU"."""
