"""The benchmarks of benchmarks/bench.py, one module per section (numbers, not pass/fail tests)."""
