"""When a request ends: stop tokens and the new-token budget."""
from __future__ import annotations

from collections.abc import Collection


def finish(tokens: list[int], max_new_tokens: int, stop_token_ids: Collection[int]) -> tuple[list[int], str | None]:
    """Cut new tokens after the first stop token or at max_new_tokens; None = keep going."""
    for i, token in enumerate(tokens[:max_new_tokens]):
        if token in stop_token_ids:
            return tokens[: i + 1], "stop"
    if len(tokens) >= max_new_tokens:
        return tokens[:max_new_tokens], "length"
    return tokens, None


def find_stop_string(text: str, stops: Collection[str], start: int = 0) -> int | None:
    """Index in `text` where the earliest stop string begins, searching occurrences that end
    after `start` (text before it was already checked); None if there is none."""
    best = None
    for stop in stops:
        if not stop:
            continue
        index = text.find(stop, max(0, start - len(stop) + 1))
        if index >= 0 and (best is None or index < best):
            best = index
    return best
