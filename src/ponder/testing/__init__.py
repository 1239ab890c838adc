"""Helpers for tests, benchmarks and checks: random-weight models saved as real checkpoints."""
