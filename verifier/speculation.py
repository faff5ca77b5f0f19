"""How many tokens each request drafts next round: the one owner of the speculation decision.

Rule (goodput, after SmartSpec): after each pass, for the requests it verified, pick the draft
lengths k_i that maximise the expected tokens committed per second of their next round,

    sum_i (1 + E_i(k_i)) / (pass(B, 1 + k_i) + wait(max_i k_i)),

where E_i(k) is how many tokens past its own the target is expected to accept from a k-token
greedy trunk and the verifier's root lookup, pass() the fitted cost of verifying those B rows
(verifier.pass_cost), and wait(k) the time the verifier stands idle for drafts of k tokens
(verifier.pass_cost.DraftWait: a line fitted to the rounds drafted on the verdict, the
drafter's steps on the critical path; mixed with the near-zero wait of drafts drafted ahead by
the measured share of rounds that were, where every drafting row's round verified a trunk, the
drafter's pre-drafts being for a trunk's outcomes). So with the speculation cache a drafting
request keeps drafting where each round's hit pays for its pass.
k = 0 sends a request to the target alone; its drafter still feeds the committed text through
the draft to keep its cache and its Agreement in step, so E_i stays known and drafting comes
back as soon as it pays.

E_i(k) is measured, never assumed: the mean, over the request's recent round starts p, of
max(min(run(p), k), m(p)), where run(p) counts the draft's consecutive teacher-forced
agreements from p (protocol.messages.Agreement: exactly what a greedy trunk drafted at p would
have had accepted) and m(p) the root lookup's tokens that were right there (where one chain is
verified, vLLM's door, the lookup goes only in rounds without a draft: min(run(p), k) for k > 0,
m(p) for k = 0). A request with
little evidence yet leans on a prior: the latest trace with evidence (the text before it), else
a coin flip per token, which asks for short drafts. Candidates: every common length
0..max, with rows whose one-token yield is below a threshold at 0. Until both kinds of round
were timed MIN_TIMED times, rounds alternate between the longest draft and none, which measures
both (one slow round alone, a cold kernel say, cannot switch drafting off); a new drafter is
timed afresh, and draft waits not timed for RETIME_AFTER rounds are timed again once.
"""
from __future__ import annotations

import logging
from verifier.acceptance import AgreementTrace
from verifier.pass_cost import DraftWait, PassCostModel

log = logging.getLogger("ouroboros.verifier")

MIN_TIMED = 4  # rounds with and without a draft a drafter is timed in before the decision trusts its costs
MIN_EVIDENCE = 16  # judged positions a request's trace needs to serve as the next request's prior
PRIOR_POSITIONS = 4  # a request's own agreement is weighed against its prior as n judged positions to this many
COIN_FLIP = 0.5  # the prior before any evidence: a draft as likely right as wrong at each token
WARN_AFTER = 48  # judged positions of a new drafter before it may be flagged as a mistaken pair
NEAR_ZERO = 0.05  # agreement at or below this, on that evidence, cannot be a draft made for this target
# Draft waits are timed only in rounds that draft: after this many rounds without one, if drafting
# would pay at no extra wait, one round drafts to time it again (the load or the drafter may have
# changed since). It costs at most one round's draft steps in this many.
RETIME_AFTER = 256


class SpeculationDecision:
    def __init__(self, skips_padding: bool = False, is_chain: bool = False) -> None:
        self.max_length = 0  # the drafter's --gamma, from its Hello (0: no drafter yet)
        self.skips_padding = skips_padding  # the engine computes only real tokens (kvcache.packed)
        self.is_chain = is_chain  # one path is verified: the lookup only in rounds without a draft (vLLM)
        self.passes = PassCostModel()
        self.traces: dict[str, AgreementTrace] = {}
        self.latest: AgreementTrace | None = None  # the latest trace with evidence: a new request's prior
        self.is_exploring_draft = False  # untimed costs: rounds alternate between the longest draft and none
        self.num_undrafted_rounds = 0  # decisions in a row that asked for no draft (RETIME_AFTER)
        self.reset_drafter(0)

    def reset_drafter(self, max_length: int) -> None:
        """A (new) drafter drafts up to `max_length` tokens; it is judged and timed afresh."""
        self.max_length = max_length
        self.wait = DraftWait()
        self.num_judged = self.num_agreed = 0
        self.is_warned = False

    def open(self, request_id: str) -> None:
        self.traces[request_id] = AgreementTrace()

    def close(self, request_id: str) -> None:
        self.traces.pop(request_id, None)

    def observe_agreement(self, request_id: str, start: int, bits: list[int]) -> None:
        trace = self.traces.get(request_id)
        if trace is None:
            return
        trace.add(start, bits)
        if len(trace.bits) >= MIN_EVIDENCE:
            self.latest = trace
        self._check_pair(bits)

    def observe_lookup(self, request_id: str, position: int, num_matched: int) -> None:
        """The round that began at committed length `position`: its root lookup's tokens that
        were the target's (verifier.requests.RoundPlan.lookup against what was appended)."""
        trace = self.traces.get(request_id)
        if trace is not None:
            trace.lookups.append((position, num_matched))

    def observe_pass(self, widths: list[int], seconds: float, is_drafting: bool) -> None:
        computed, padding = self._size(widths)
        self.passes.observe(len(widths), computed, seconds, padding, is_drafting)

    def choose(self, request_ids: list[str], verified_trunk: list[bool] | None = None) -> list[int]:
        """Each request's next draft length (0: the target alone), by the rule above;
        `verified_trunk`: whether each request's round just verified a trunk (its next block may
        then be drafted ahead)."""
        n, longest = len(request_ids), self.max_length
        if n == 0 or longest == 0:
            return [0] * n
        if self.passes.coefficients is None or min(self.wait.num_drafted, len(self.wait.undrafted)) < MIN_TIMED:
            self.is_exploring_draft = not self.is_exploring_draft
            return [longest if self.is_exploring_draft else 0] * n
        expected = [self.expected(request_id) for request_id in request_ids]
        trunks = verified_trunk if verified_trunk is not None else [False] * n
        best = self.best(expected, trunks)
        self.num_undrafted_rounds = 0 if any(best) else self.num_undrafted_rounds + 1
        if self.num_undrafted_rounds >= RETIME_AFTER:
            best = self.best(expected, trunks, is_stale=True)
            self.num_undrafted_rounds = 0
        return best

    def best(self, expected: list[list[float]], verified_trunk: list[bool], is_stale: bool = False) -> list[int]:
        best, best_rate = [0] * len(expected), -1.0
        for threshold in sorted({e[1] for e in expected}, reverse=True):  # a tie goes to fewer draft tokens
            for length in range(self.max_length + 1):
                lengths = [length if e[1] >= threshold else 0 for e in expected]
                can_be_ahead = all(t for t, k in zip(verified_trunk, lengths) if k)
                rate = self.rate(lengths, expected, is_stale, can_be_ahead)
                if rate > best_rate:
                    best, best_rate = lengths, rate
        return best

    def expected(self, request_id: str) -> list[float]:
        """E(k), k = 0..max_length: the request's own trace of n judged positions, weighed
        against its prior as n to PRIOR_POSITIONS: the latest other trace with evidence, else
        E(k) = sum_j COIN_FLIP^j."""
        longest = self.max_length
        own = self.traces.get(request_id)
        if self.latest is not None and self.latest is not own:
            prior = self.latest.expected_committed(longest, self.is_chain)
        else:
            prior = [sum(COIN_FLIP ** j for j in range(1, k + 1)) for k in range(longest + 1)]
        n = len(own.bits) if own is not None else 0
        if n == 0:
            return prior
        mine = own.expected_committed(longest, self.is_chain)
        return [(n * e + PRIOR_POSITIONS * p) / (n + PRIOR_POSITIONS) for e, p in zip(mine, prior)]

    def rate(self, lengths: list[int], expected: list[list[float]], is_stale: bool = False,
             can_be_ahead: bool = False) -> float:
        committed = sum(1.0 + e[k] for k, e in zip(lengths, expected))
        computed, padding = self._size([1 + k for k in lengths])
        longest = max(lengths)
        seconds = self.passes.estimate(len(lengths), computed, padding, is_drafting=longest > 0)
        seconds += self.wait.estimate(longest, is_stale, can_be_ahead)
        return committed / max(seconds, 1e-9)

    def _size(self, widths: list[int]) -> tuple[float, float]:
        """(width the pass computes, padded slots): the widest row, or where padding is skipped
        the mean, plus what the padding still costs (verifier.pass_cost.PassCostModel)."""
        widest = max(widths)
        if not self.skips_padding:
            return float(widest), 0.0
        return sum(widths) / len(widths), float(len(widths) * widest - sum(widths))

    def _check_pair(self, bits: list[int]) -> None:
        """Warn once when a new drafter's first WARN_AFTER judged tokens almost never agree: a
        draft made for another model, or a tokenizer that differs past the fingerprint."""
        if self.is_warned or self.num_judged >= WARN_AFTER:
            return
        self.num_judged += len(bits)
        self.num_agreed += sum(bits)
        if self.num_judged >= WARN_AFTER and self.num_agreed <= NEAR_ZERO * self.num_judged:
            self.is_warned = True
            log.warning("the draft agreed with the target on %d of its first %d judged tokens: check that the pair "
                        "shares a tokenizer and that the draft was made for this target", self.num_agreed,
                        self.num_judged)
