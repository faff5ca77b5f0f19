"""The client text of a request's growing tokens, decoded a few tokens at a time.

Rule (as vLLM's incremental detokenizer): the text a step's new tokens add is
decode(window + new)[len(decode(window)):], where the window is the previous step's tokens. The
window gives the new tokens their left context (a leading space, a merge across the boundary) at
a cost that does not grow with the text. A step whose text ends inside a multi-byte character
(U+FFFD, bytes still to come) settles nothing and waits for more tokens, unless it is the last.
No tensors: the decode function is the tokenizer's."""
from __future__ import annotations

from collections.abc import Callable, Collection

from verifier.stopping import find_stop_string


class IncrementalText:
    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.tokens: list[int] = []
        self.text = ""  # the text of tokens[:settled]
        # one per settled step: (tokens settled, text length, its window's first token)
        self.steps: list[tuple[int, int, int]] = [(0, 0, 0)]

    @property
    def settled(self) -> int:
        """Tokens whose text is in `text`."""
        return self.steps[-1][0]

    def extend(self, tokens: list[int], is_final: bool = False) -> None:
        """Add tokens; settle their text unless it ends mid-character (and this is not the end)."""
        self.tokens.extend(tokens)
        settled, _, _ = self.steps[-1]
        if settled == len(self.tokens):
            return
        window = self.steps[-2][0] if len(self.steps) > 1 else 0
        before = self.decode(self.tokens[window:settled])
        after = self.decode(self.tokens[window:])
        if after.endswith("\ufffd") and not is_final:
            return
        self.text += after[len(before):]
        self.steps.append((len(self.tokens), len(self.text), window))

    def length_at(self, count: int) -> int:
        """Length of the whole characters of tokens[:count], for count <= settled: exact at a
        step's end, else decoded within that step's window (a character still missing bytes
        does not count)."""
        step = next(i for i, (end, _, _) in enumerate(self.steps) if end >= count)
        end, length, window = self.steps[step]
        if end == count:
            return length
        start, start_length, _ = self.steps[step - 1]
        partial = self.decode(self.tokens[window:count]).rstrip("\ufffd")
        return start_length + len(partial) - len(self.decode(self.tokens[window:start]))

    def stop_cut(self, stops: Collection[str], checked: int) -> tuple[int, int] | None:
        """Where a stop string ends the output: (tokens kept, text length kept), or None. The
        text ends just before the first stop string (excluded); the tokens end with the token
        that completed it (included). `checked` characters were searched before."""
        index = find_stop_string(self.text, stops, checked)
        if index is None:
            return None
        low, high = 1, self.settled  # the fewest tokens whose text holds a stop string: binary search
        while low < high:
            middle = (low + high) // 2
            if find_stop_string(self.text[: self.length_at(middle)], stops) is not None:
                high = middle
            else:
                low = middle + 1
        return low, index
