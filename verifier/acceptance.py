"""What a request's draft is expected to get accepted, measured: the acceptance half of the
speculation decision (verifier.speculation). The drafter reports, for every committed token,
whether its greedy guess was that token (protocol.messages.Agreement); the verifier notes at each
round start how many tokens its own prompt lookup got right."""
from __future__ import annotations

from collections import deque

HISTORY = 64  # committed positions of a request whose agreement is remembered: a few seconds of text, so a change shows soon


class AgreementTrace:
    """One request's teacher-forced agreement bits over its latest committed positions, and at
    its latest round starts how many tokens the verifier's own prompt lookup got right there."""

    def __init__(self) -> None:
        self.bits: deque[int] = deque(maxlen=HISTORY)
        self.end: int | None = None  # the position after the last bit
        self.lookups: deque[tuple[int, int]] = deque(maxlen=HISTORY // 2)  # (round start, lookup tokens right)

    def add(self, start: int, bits: list[int]) -> None:
        if self.end is not None and start != self.end:  # a gap (a re-synced drafter): start afresh
            self.bits.clear()
        self.bits.extend(1 if bit else 0 for bit in bits)
        self.end = start + len(bits)

    def run_at(self, position: int) -> tuple[int, bool] | None:
        """(the draft's run of agreements from `position`, whether it is still going at the
        trace's end, so only a lower bound); None where the trace does not cover it."""
        if self.end is None or not self.end - len(self.bits) <= position < self.end:
            return None
        run, index = 0, position - (self.end - len(self.bits))
        while index + run < len(self.bits) and self.bits[index + run]:
            run += 1
        return run, index + run == len(self.bits)

    def expected_committed(self, max_length: int, is_chain: bool = False) -> list[float]:
        """C(k) - 1 for k = 0..max_length, over the recent round starts p: a k-token trunk and
        the root lookup are verified side by side, so a round accepts max(min(run(p), k), m(p));
        where only a chain is verified (`is_chain`: vLLM's door sends the lookup only in a round
        without a draft), min(run(p), k) for k > 0 and m(p) for k = 0.
        A run still going counts only for the k it already reaches (as in expected_accepted).
        Without round starts covered yet, over every judged position with no lookup."""
        samples = [(*found, matched) for p, matched in self.lookups if (found := self.run_at(p)) is not None]
        if not samples:
            return self.expected_accepted(max_length)
        expected = []
        for k in range(max_length + 1):
            known = [(min(run, k) if is_chain and k else max(min(run, k), matched))
                     for run, is_open, matched in samples if not is_open or run >= k]
            expected.append(sum(known) / len(known) if known else float(k))
        return expected

    def expected_accepted(self, max_length: int) -> list[float]:
        """E(k) for k = 0..max_length over every judged position. A run still going at the
        trace's end is only a lower bound, so it counts for the k it already reaches; every other
        run counts for every k."""
        closed: dict[int, int] = {}  # run length -> positions whose run ended with a disagreement
        num_open, run = 0, 0  # the trailing ones: positions whose run is still going
        for bit in reversed(self.bits):
            run = run + 1 if bit else 0
            if num_open == run - 1 and bit and not closed:
                num_open = run
            else:
                closed[run] = closed.get(run, 0) + 1
        expected = []
        for k in range(max_length + 1):
            counted = max(num_open - k + 1, 0) if k else num_open  # open runs already at least k long
            total = k * counted + sum(min(r, k) * c for r, c in closed.items())
            count = counted + sum(closed.values())
            expected.append(total / count if count else float(k))
        return expected


class OfferedLookups:
    """The lookups a request was offered at its latest round starts, each judged once the
    committed text shows how many of its tokens were the target's: a chain verifier (vLLM)
    verifies a lookup only in rounds it is sent, so it is judged against what came later."""

    def __init__(self) -> None:
        self.pending: deque[tuple[int, list[int]]] = deque(maxlen=HISTORY // 2)  # (round start, lookup)

    def offer(self, position: int, lookup: list[int]) -> None:
        self.pending.append((position, list(lookup)))

    def judge(self, tokens: list[int]) -> list[tuple[int, int]]:
        """(round start, lookup tokens right) for each offered lookup the committed `tokens`
        now decide: all of it committed, or a token that differs; the rest wait."""
        judged, waiting = [], deque(maxlen=self.pending.maxlen)
        for position, lookup in self.pending:
            seen = tokens[position : position + len(lookup)]
            matched = 0
            while matched < len(seen) and seen[matched] == lookup[matched]:
                matched += 1
            if matched == len(lookup) or matched < len(seen):
                judged.append((position, matched))
            else:
                waiting.append((position, lookup))
        self.pending = waiting
        return judged
