"""Benchmarks: `python bench/run.py` (see the README); each module also runs as a script."""
