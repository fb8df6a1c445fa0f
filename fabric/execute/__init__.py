"""The only layer that calls Ray for work: the backend wrapper, the worker body, the engine loop."""
