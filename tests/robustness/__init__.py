"""Robustness: the real CLI fed what users really feed it.

Every class of failure has its exit code (README, "Errors and exit codes") and a
test here that fails when the behaviour regresses:

- recipes (exit 2): test_malformed_recipes.py
- models (exit 3, 4): test_models.py
- calibration text (exit 4): test_calibration_inputs.py
- environment (exit 5): test_environment.py (full disk in a stage and in dist/,
  too little space, read-only folder), ../test_build_cache.py (busy and stale
  build locks, a file where the build folder should be)
- interruption: test_interruption.py (kill -9 during merge, quantize, shard
  writing and dist/ assembly)
- publishing (exit 7): test_publishing.py, ../test_push.py
- secrets: test_secrets.py
- lock mismatch (exit 8) and reproducibility (exit 9): ../test_reproducibility.py
"""
