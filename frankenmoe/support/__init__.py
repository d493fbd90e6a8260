"""Small helpers shared by the engine and the stages: file hashes, JSON, recipe paths,
progress output, token scrubbing, tool versions, determinism and the device."""
