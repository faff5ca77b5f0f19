"""When a request ends: stop tokens and the new-token budget."""
from __future__ import annotations

from collections.abc import Collection


def finish(appended: list[int], num_kept: int, max_new_tokens: int, stop_token_ids: Collection[int]
           ) -> tuple[list[int], str | None]:
    """Of the tokens just `appended` after `num_kept` new tokens kept already, those the output
    keeps: cut after the first stop token or at max_new_tokens (work of the appended tokens
    alone); None = keep going."""
    room = max_new_tokens - num_kept
    for i, token in enumerate(appended[:room]):
        if token in stop_token_ids:
            return appended[: i + 1], "stop"
    if len(appended) >= room:
        return appended[:room], "length"
    return appended, None


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
