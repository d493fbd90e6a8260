"""Variants, sweeps and studies: many builds over one cache, above the engine."""
