"""What pins a build: the lock file (model commits, file hashes, tool versions,
platform) and the recipe as it is published."""
