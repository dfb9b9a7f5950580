"""varco-labeler benchmarks: ``python -m bench`` (see bench/run.py). They print tables and write
JSON; they never assert a speed."""
