"""Benchmarks: run from the repository root, e.g. ``python -m benchmarks.quality``; each prints a
table and writes its results under ``benchmarks/results/``."""
