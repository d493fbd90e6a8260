"""Measuring the built models against standard benchmarks (lm-evaluation-harness)."""
