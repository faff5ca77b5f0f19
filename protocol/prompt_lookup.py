"""Prompt lookup: a draft from the text itself, no model. Torch-free and pure, so both sides use
it: the drafter as a phrase branch, the verifier for a round that comes without a draft."""
from __future__ import annotations

from collections.abc import Sequence


def lookup_continuation(tokens: Sequence[int], max_ngram: int, min_ngram: int, length: int) -> list[int]:
    """Prompt lookup (Saxena 2023) as a phrase source: the `length` tokens that followed the
    most recent earlier occurrence of the longest suffix n-gram of `tokens`.

    Rule: try n = max_ngram down to min_ngram; the first n whose last-n-token suffix also
    occurs earlier in `tokens` (overlapping it is fine: runs repeat) wins, and the tokens that
    followed that occurrence are proposed. Nothing found: [].
    A proposal is only a guess: the target verifies every token of it.
    """
    count = len(tokens)
    if length <= 0:
        return []
    for n in range(min(max_ngram, count - 1), min_ngram - 1, -1):
        suffix = list(tokens[count - n :])
        for start in range(count - n - 1, -1, -1):  # most recent occurrence first
            if list(tokens[start : start + n]) == suffix:
                return list(tokens[start + n : start + n + length])
    return []
