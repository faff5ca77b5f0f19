"""Bringing processes up: the launch commands, configuration, the sequential loop, serve, workers,
torchrun, the HTTP door process and vLLM."""
