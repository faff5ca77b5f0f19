"""Target side: tree verification, acceptance rules, target KV cache, request scheduling."""
