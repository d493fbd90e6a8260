"""Measurement: metrics, evaluation of a model on text windows, the five-state verdict,
quality limits and reports, and standard benchmarks (lm-evaluation-harness)."""
