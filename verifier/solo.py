"""Solo or speculative: whichever commits more tokens per second here, measured. No tensors.

Where drafts do not pay (prose, a prompt the draft cannot follow), speculation must not lose to
the target alone. On a CPU the two processes share cores, and speculation can lose even where
the pass-cost rule (verifier.pass_cost) says each draft token pays for its place: the verifier
runs on its share of the cores while the drafter takes the rest, and it waits for a fresh draft
after every rejection. Solo, the drafter rests on every request (Verdict.wants_draft) and the
verifier takes the cores it leaves free (--solo-threads).

Rule: time both modes on the rounds themselves (tokens committed per second of wall time, the
waits for drafts included) and keep the faster. Rates are kept apart by load (open requests,
in powers of two: load_bucket), since a batch of eight may favour solo where one request favours
speculation; a mode is only ever compared with the other at the same load, and when the load
moves to one where both are known, the faster is taken at once. A load above one never timed is
timed solo first: its rounds cost the target's own rate at most, where a first speculative
stint waits for the drafter to draft every request's first block. A mode is judged after
TRIAL_ROUNDS rounds at its load, or after CLEAR_LOSS_ROUNDS if the other was CLEAR_LOSS times
faster; the first round of a stint pays for the switch and is not counted. Solo is timed once
early at each load, then again after solo_gap speculative rounds (its rate drifts with context
and load): soon where the race was close, since a stale solo rate could keep a request
speculating when speculation has become the slower, and seldom where speculation wins clearly.
A solo round far slower than its stint's usual is the machine's hiccup (StintRate). A
speculation trial that loses costs time (a first stint, which ends only to time solo, is judged
once solo's own trial is over), so the next one waits until that cost is at most EXPLORATION_BUDGET of
the time spent solo (retry_gap), and at least twice as long as the last wait while it keeps
losing; at a load of B requests the wait is B times as long (speculation_wait), since the trial
first waits for the drafter to catch up on each."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

TRIAL_ROUNDS = 8
CLEAR_LOSS_ROUNDS = 4  # a mode this far behind after this many rounds ends its trial early
CLEAR_LOSS = 1.5
RETRY_SPECULATION_AFTER = 16  # the shortest wait before speculation is tried again
MAX_RETRY_AFTER = 128
RETRY_SOLO_AFTER = 256  # the longest wait before solo is timed again
RETIME_SOLO_AFTER = 32  # the shortest
SOLO_TIMING_BUDGET = 0.015  # of speculation's time, the most that timing solo again may cost
EXPLORATION_BUDGET = 0.03  # of solo's time, the most that lost speculation trials may cost
RATE_MEMORY = 0.85  # weight of the past, per round, in a stint's rate
MARGIN = 1.03  # the other mode must be this much faster to switch to it (noise is not a reason)
HICCUP = 3.0  # a solo round this many times its stint's median round is the machine's hiccup, not solo's cost
HICCUP_WINDOW = 9  # recent rounds whose median that is


def load_bucket(num_requests: int) -> int:
    """Loads whose rates are shared: 1, 2, 3-4, 5-8, 9-16, ..."""
    return 1 << max(num_requests - 1, 0).bit_length()


def retry_gap(trial_rounds: int, speculating: float, solo: float, last_gap: int) -> int:
    """Solo rounds to wait before speculation's next trial, after it lost one.
    Rule: a trial of n rounds at rate s, against solo's rate r, cost n*(1 - s/r) rounds of solo's
    time; waiting G rounds keeps that within EXPLORATION_BUDGET when G = n*(1 - s/r)/budget.
    A loss in a row at least doubles the wait; it stays within [RETRY_SPECULATION_AFTER,
    MAX_RETRY_AFTER], so speculation is always tried again."""
    lost_rounds = trial_rounds * max(1.0 - speculating / solo, 0.0)
    gap = max(round(lost_rounds / EXPLORATION_BUDGET), 2 * last_gap)
    return min(max(gap, RETRY_SPECULATION_AFTER), MAX_RETRY_AFTER)


def solo_gap(speculating: float | None, solo: float | None) -> int:
    """Speculative rounds to wait before solo is timed again.
    Rule: timing solo takes TRIAL_ROUNDS rounds at solo's rate r instead of speculation's s, a
    cost of TRIAL_ROUNDS*(1 - r/s) rounds; waiting G rounds keeps it within SOLO_TIMING_BUDGET
    when G = TRIAL_ROUNDS*(1 - r/s)/budget, within [RETIME_SOLO_AFTER, RETRY_SOLO_AFTER]."""
    if not speculating or not solo:
        return RETRY_SOLO_AFTER
    lost_rounds = TRIAL_ROUNDS * max(1.0 - solo / speculating, 0.0)
    return min(max(round(lost_rounds / SOLO_TIMING_BUDGET), RETIME_SOLO_AFTER), RETRY_SOLO_AFTER)


@dataclass
class StintRate:
    """Tokens per second over one stint of a mode, recent rounds weighing most.
    Rule (caps_hiccups, solo's stints): a solo round waits on nothing but the target's own pass,
    so one that took more than HICCUP times the median of the stint's recent rounds was the
    machine's (a preemption, a collection) and counts as HICCUP medians; one such round once
    kept a whole request speculating at 0.7x solo's rate. A lasting slowdown moves the median
    within a few rounds. Speculation's rounds are never capped: a long wait for a draft is its
    real cost."""

    caps_hiccups: bool = False
    tokens: float = 0.0
    seconds: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=HICCUP_WINDOW))

    def observe(self, tokens: int, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        counted = seconds
        if self.caps_hiccups and len(self.recent) >= 3:
            counted = min(seconds, HICCUP * median(self.recent))
        self.recent.append(seconds)
        self.tokens = RATE_MEMORY * self.tokens + tokens
        self.seconds = RATE_MEMORY * self.seconds + counted

    @property
    def per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


class SoloSwitch:
    def __init__(self, is_enabled: bool = True) -> None:
        self.is_enabled = is_enabled
        self.is_solo = False
        self.rates: dict[tuple[bool, int], StintRate] = {}  # by (is_solo, load bucket): each mode's latest stint there
        self.load = 0  # the load bucket of the last round (0: none yet)
        self.stint_loads: set[int] = set()  # load buckets this stint has timed (their old rates are gone)
        self.rounds_in_mode = 0  # rounds since the last switch
        self.rounds_judged = 0  # rounds of this stint at the current load
        self.retry_speculation_after = RETRY_SPECULATION_AFTER
        self.untimed_trial: tuple[int, int] | None = None  # (load bucket, rounds): a stint ended to time solo

    def rate(self, is_solo: bool, load: int | None = None) -> float | None:
        rate = self.rates.get((is_solo, self.load if load is None else load_bucket(load)))
        return None if rate is None else rate.per_second

    def record(self, num_committed: int, seconds: float, load: int = 1) -> bool:
        """One round (all rows of one pass): tokens committed and the wall time since the round
        before, with `load` requests open. True when the mode changed."""
        if not self.is_enabled:
            return False
        if self.see_load(load):
            return True
        bucket = self.load
        self.rounds_in_mode += 1
        self.rounds_judged += 1
        if self.rounds_in_mode > 1:
            if bucket not in self.stint_loads:
                self.stint_loads.add(bucket)
                self.rates[(self.is_solo, bucket)] = StintRate(caps_hiccups=self.is_solo)
            self.rates[(self.is_solo, bucket)].observe(num_committed, seconds)
        return self._judge()

    def speculation_wait(self) -> int:
        """Solo rounds before speculation is tried again at this load. Its trial first waits for
        the drafter to catch up on every open request (it rested on them all), so the trial's
        cost grows with the load, and by the same budget (retry_gap) so does the wait."""
        return min(self.retry_speculation_after * self.load, MAX_RETRY_AFTER)

    def see_load(self, load: int) -> bool:
        """`load` requests are open now (one came or went): at a new load bucket the mode is
        judged afresh, by what is known there. True when the mode changed."""
        bucket = load_bucket(load)
        if not self.is_enabled or bucket == self.load:
            return False
        self.load, self.rounds_judged = bucket, 0
        here, there = self.rate(self.is_solo), self.rate(not self.is_solo)
        is_untimed = here is None and there is None and not self.is_solo and bucket > 1
        return (is_untimed or (here is not None and there is not None and there > MARGIN * here)) and self._switch()

    def _judge(self) -> bool:
        here, there = self.rate(self.is_solo), self.rate(not self.is_solo)
        is_behind = here is not None and there is not None and there > MARGIN * here
        if self.rounds_judged < TRIAL_ROUNDS:
            if not (self.rounds_judged >= CLEAR_LOSS_ROUNDS and is_behind and there > CLEAR_LOSS * here):
                return False
        if self.is_solo:  # solo's own trial is over: its rate is worth judging the first stint by
            self._judge_untimed_trial(speculating=there, solo=here)
        is_trial_over = not self.is_solo and self.rounds_judged <= TRIAL_ROUNDS and there is not None
        if is_behind:
            if is_trial_over:  # speculation lost its trial: wait longer before the next
                self.retry_speculation_after = retry_gap(self.rounds_judged, here, there, self.retry_speculation_after)
            return self._switch()
        if is_trial_over:  # speculation won its trial
            self.retry_speculation_after = RETRY_SPECULATION_AFTER
        if self.is_solo:
            return self.rounds_in_mode >= self.speculation_wait() and self._switch()
        if there is None:  # solo is timed now; this stint is judged once it is (_judge_untimed_trial)
            self.untimed_trial = (self.load, self.rounds_judged)
        return (there is None or self.rounds_in_mode >= solo_gap(here, there)) and self._switch()

    def _judge_untimed_trial(self, speculating: float | None, solo: float | None) -> None:
        """Speculation's first stint at a load ended only to time solo; once solo's own trial is
        over (TRIAL_ROUNDS, not its first round) and solo was faster, that stint was a lost trial
        and the wait before the next follows from its cost (retry_gap), as for any other."""
        if self.untimed_trial is None or speculating is None or solo is None:
            return
        load, rounds = self.untimed_trial
        self.untimed_trial = None
        if load == self.load and solo > MARGIN * speculating:
            self.retry_speculation_after = retry_gap(rounds, speculating, solo, self.retry_speculation_after)

    def _switch(self) -> bool:
        self.is_solo = not self.is_solo
        self.stint_loads = set()
        self.rounds_in_mode = self.rounds_judged = 0
        return True

    def describe(self) -> str:
        rates = {("solo" if solo else "speculating"): self.rate(solo) for solo in (False, True)}
        return ", ".join(f"{name} {value:.1f} tok/s" for name, value in rates.items() if value is not None)
