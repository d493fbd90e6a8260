"""The engine: runs whatever stage list it is given, in order, with keys, the cache,
atomic outputs and publishing (build), a dry plan (plan) and reproducibility checks
(repro). It names no stage: stages answer through the hooks of `frankenmoe.stages.base`."""
