"""Solo or speculative: whichever commits more tokens per second here, measured. No tensors.

Where drafts do not pay (prose, a prompt the draft cannot follow), speculation must not lose to
the target alone. On a CPU the two processes share cores, and speculation can lose even where
the pass-cost rule (verifier.pass_cost) says each draft token pays for its place: the verifier
runs on its share of the cores while the drafter takes the rest, and it waits for a fresh draft
after every rejection. Solo, the drafter rests on every request (Verdict.wants_draft) and the
verifier takes the cores it leaves free (--solo-threads).

Rule: time both modes on the rounds themselves (tokens committed per second of wall time, the
waits for drafts included) and keep the faster. A mode is judged after TRIAL_ROUNDS rounds, or
after CLEAR_LOSS_ROUNDS if the other was CLEAR_LOSS times faster; the first round of a stint pays
for the switch and is not counted. Solo is timed once early, then
again every RETRY_SOLO_AFTER speculative rounds (its rate drifts with context and load);
speculation is tried again after RETRY_SPECULATION_AFTER solo rounds, twice as long each time
it loses again (up to MAX_RETRY_AFTER)."""
from __future__ import annotations

from dataclasses import dataclass

TRIAL_ROUNDS = 8
CLEAR_LOSS_ROUNDS = 4  # a mode this far behind after this many rounds ends its trial early
CLEAR_LOSS = 1.5
RETRY_SPECULATION_AFTER = 16
MAX_RETRY_AFTER = 128
RETRY_SOLO_AFTER = 256
RATE_MEMORY = 0.85  # weight of the past, per round, in a stint's rate
MARGIN = 1.03  # the other mode must be this much faster to switch to it (noise is not a reason)


@dataclass
class StintRate:
    """Tokens per second over one stint of a mode, recent rounds weighing most."""

    tokens: float = 0.0
    seconds: float = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        self.tokens = RATE_MEMORY * self.tokens + tokens
        self.seconds = RATE_MEMORY * self.seconds + max(seconds, 0.0)

    @property
    def per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


class SoloSwitch:
    def __init__(self, is_enabled: bool = True) -> None:
        self.is_enabled = is_enabled
        self.is_solo = False
        self.rates = {False: StintRate(), True: StintRate()}  # by is_solo: the latest stint of each
        self.rounds_in_mode = 0
        self.retry_speculation_after = RETRY_SPECULATION_AFTER

    def record(self, num_committed: int, seconds: float) -> bool:
        """One round (all rows of one pass): tokens committed and the wall time since the round
        before. True when the mode changed."""
        if not self.is_enabled:
            return False
        self.rounds_in_mode += 1
        if self.rounds_in_mode > 1:
            self.rates[self.is_solo].observe(num_committed, seconds)
        here, there = self.rates[self.is_solo].per_second, self.rates[not self.is_solo].per_second
        is_behind = here is not None and there is not None and there > MARGIN * here
        if self.rounds_in_mode < TRIAL_ROUNDS:
            if not (self.rounds_in_mode >= CLEAR_LOSS_ROUNDS and is_behind and there > CLEAR_LOSS * here):
                return False
        is_trial_over = not self.is_solo and self.rounds_in_mode <= TRIAL_ROUNDS and there is not None
        if is_behind:
            if is_trial_over:  # speculation lost its trial: wait longer before the next
                self.retry_speculation_after = min(2 * self.retry_speculation_after, MAX_RETRY_AFTER)
            return self._switch()
        if is_trial_over:  # speculation won its trial
            self.retry_speculation_after = RETRY_SPECULATION_AFTER
        if self.is_solo:
            return self.rounds_in_mode >= self.retry_speculation_after and self._switch()
        return (there is None or self.rounds_in_mode >= RETRY_SOLO_AFTER) and self._switch()

    def _switch(self) -> bool:
        self.is_solo = not self.is_solo
        self.rates[self.is_solo] = StintRate()
        self.rounds_in_mode = 0
        return True

    def describe(self) -> str:
        rates = {("solo" if solo else "speculating"): rate.per_second for solo, rate in self.rates.items()}
        return ", ".join(f"{name} {value:.1f} tok/s" for name, value in rates.items() if value is not None)
