"""The offline examples' models: made on this machine from what the package registries
ship, cached by a hash of their inputs, never downloaded from the Hub."""
