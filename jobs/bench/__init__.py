"""`python -m jobs.bench`: benchmarks (docs/benchmarks.md)."""
