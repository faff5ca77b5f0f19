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


class NgramIndex:
    """lookup_continuation, answered from an index of the committed text that grows with it,
    so a round costs what its new tokens and its uncommitted tail cost, not the whole text.

    For each n in min_ngram..max_ngram it keeps, per n-gram of the committed tokens, its two most
    recent starts. A query is committed tokens (a prefix that only grows: the index takes what
    was added since the last query) plus a short tail (a drafted trunk): occurrences that reach
    into the tail are searched directly, the rest come from the index. The answer is exactly
    lookup_continuation's (the most recent earlier occurrence of the longest suffix n-gram)."""

    def __init__(self, max_ngram: int, min_ngram: int) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.committed: list[int] = []
        self.starts: dict[tuple[int, ...], tuple[int, int]] = {}  # gram -> (latest start, the one before)

    def _index(self, tokens: Sequence[int], committed: int) -> None:
        old = len(self.committed)
        if committed < old or (old and tokens[old - 1] != self.committed[-1]):
            self.committed, self.starts = [], {}  # not a continuation of what was indexed: start over
        old = len(self.committed)
        self.committed.extend(tokens[old:committed])
        for n in range(self.min_ngram, self.max_ngram + 1):
            for start in range(max(0, old - n + 1), committed - n + 1):
                gram = tuple(self.committed[start : start + n])
                self.starts[gram] = (start, self.starts.get(gram, (-1, -1))[0])

    def lookup(self, tokens: Sequence[int], committed: int, length: int) -> list[int]:
        """lookup_continuation(tokens, max_ngram, min_ngram, length), where tokens[:committed]
        is the committed text (it only grows from one query to the next)."""
        self._index(tokens, committed)
        count = len(tokens)
        if length <= 0:
            return []
        for n in range(min(self.max_ngram, count - 1), self.min_ngram - 1, -1):
            suffix = list(tokens[count - n :])
            bound = count - n - 1  # the latest start an earlier occurrence may have
            for start in range(bound, max(committed - n, -1), -1):  # occurrences reaching into the tail
                if list(tokens[start : start + n]) == suffix:
                    return list(tokens[start + n : start + n + length])
            latest, before = self.starts.get(tuple(suffix), (-1, -1))
            start = latest if latest <= bound else before
            if start >= 0:
                return list(tokens[start + n : start + n + length])
        return []
