"""Benchmarks of seal-env: policy comparison (compare_policies) and statistics helpers (stats)."""
