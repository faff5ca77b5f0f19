"""The OpenAI-compatible HTTP door in front of the verifier (optional extra: .[http])."""
