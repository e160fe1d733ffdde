"""Benchmarks: scripts that print a table and write JSON. Results are recorded in docs/benchmarks.md."""
