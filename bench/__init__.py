"""The benchmark of issue 8: see README "Benchmark" and `python -m bench --help`."""
