"""KV-cache operations shared by the two engines (each engine owns its own caches)."""
