"""Pushing a finished build to the Hub: a command over the published folders, not a stage."""
