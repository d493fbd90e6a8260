"""Model checkpoints on disk: finding and checking sources, streaming them a layer at
a time, loading published folders, and writing sharded safetensors."""
