"""The GPU worker process: loads the engine once, then runs pre-labelling jobs from Redis."""
