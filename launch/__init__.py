"""Bringing processes up: CLI, configuration, model loading and placement, local launch."""
