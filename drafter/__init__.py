"""Draft side: phrase pool, lookahead phrase drafting in the draft model, draft KV cache."""
