"""Which requests take the next round, and how wide their pass is: bookkeeping, no tensors."""
from __future__ import annotations

import time
from collections.abc import Callable

from protocol.prompt_lookup import lookup_continuation
from verifier.config import VerifierConfig
from verifier.pass_cost import YIELD_SMOOTHING, PassCostModel, best_widths
from verifier.requests import RoundPlan, ServerRequest
from verifier.solo import SoloSwitch

UNMEASURED_PASS_S = 0.06  # a one-token pass until one is timed (sets the gathering window)


class Scheduler:
    def __init__(self, config: VerifierConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock  # injected in tests; the same clock as ServerRequest.waiting_since
        self.requests: dict[str, ServerRequest] = {}
        self.order: list[str] = []  # round-robin: the requests served last go to the back
        self.pass_cost = PassCostModel()  # measured seconds per target pass, by its size, while drafting
        self.solo_pass_cost = PassCostModel()  # the same on the threads of solo passes (server.pick_threads)
        self.recent_yield = 1.0  # draft yield across requests lately: a new request starts from it
        self.solo = SoloSwitch(is_enabled=config.is_width_fitted)  # the target alone, while it is faster
        self.was_plain = False  # the last unfitted solo pass was cut plain (see plan)
        self.skips_padding = False  # the engine's batched passes skip padding (the server sets it from the engine)

    @property
    def is_drafter_idle(self) -> bool:
        """No request waits for a draft: the drafter was told to rest on every one, or was not yet
        told of it (or none is open), so the cores it drafts on are free for the target's work."""
        return all(not request.wants_draft or not request.is_on_drafter for request in self.requests.values())

    @property
    def holds_every_draft(self) -> bool:
        """Every request that wants a draft has one that fits: a drafter that drafts only while
        we wait (--no-pre-drafts) is idle now."""
        return all(not request.wants_draft or not request.is_on_drafter or request.has_draft_candidate()
                   for request in self.requests.values())

    def add(self, request: ServerRequest) -> bool:
        """True when its coming changed the mode (verifier.solo: the rates are kept by load)."""
        is_switched = self.solo.see_load(len(self.requests) + 1)
        request.draft_yield = self.recent_yield
        request.wants_draft = not self.solo.is_solo
        self.requests[request.request_id] = request
        self.order.append(request.request_id)
        return is_switched

    def remove(self, request_id: str) -> None:
        self.requests.pop(request_id, None)
        if request_id in self.order:
            self.order.remove(request_id)

    def own_lookup(self, tokens: list[int]) -> list[int]:
        """The verifier's own prompt-lookup branch for a round without a draft."""
        c = self.config
        return lookup_continuation(tokens, c.lookup_ngram, c.lookup_min_ngram, c.own_lookup_tokens)

    def pick_ready(self, is_drafter_absent: bool) -> list[ServerRequest]:
        """Up to --max-batch requests ready for a round (a draft fits, or none is worth waiting
        for), fairest first."""
        now = self.clock()
        ready = [self.requests[r] for r in self.order if self.is_ready(self.requests[r], now, is_drafter_absent)]
        return ready[: self.config.max_batch]

    def is_ready(self, request: ServerRequest, now: float, is_drafter_absent: bool) -> bool:
        return (request.has_draft_candidate() or is_drafter_absent or request.needs_no_draft()
                or not request.wants_draft  # the drafter was told to rest: no draft is coming
                or not self.is_draft_worth_waiting(request) or now - request.waiting_since > self.config.draft_timeout_s)

    def is_draft_worth_waiting(self, request: ServerRequest) -> bool:
        """Not while the request's drafts yield less than a draft token costs at this load
        (verifier.pass_cost.PassCostModel.break_even_yield); it explores again in time."""
        if not self.config.is_width_fitted:
            return True
        threshold = self.pass_cost.break_even_yield(min(len(self.requests), self.config.max_batch))
        return threshold is None or request.planning_yield() >= threshold

    def wants_draft(self, request: ServerRequest) -> bool:
        """Told to the drafter with each verdict: will the next round wait for this request's
        draft? Not while its drafts do not pay (is_draft_worth_waiting), so the drafter rests
        on it instead of taking the machine from the target; after EXPLORE_AFTER rounds without
        verified draft tokens the answer is True again, and a draft comes to be measured. Never
        while the target alone is the faster mode (verifier.solo)."""
        return not self.solo.is_solo and not request.needs_no_draft() and self.is_draft_worth_waiting(request)

    def is_gathering(self, ready: list[ServerRequest], is_drafter_absent: bool) -> bool:
        """Hold a part batch while a request whose verdict just went out may still join it.
        Rule: a row that joins costs the pass a little (one more row); one left out later
        costs a pass of its own (at least c(1, 1)) and splits the batch again, so wait for it
        up to half the measured cost of a one-token pass."""
        if not ready or len(ready) >= self.config.max_batch or is_drafter_absent:
            return False
        window = 0.5 * (self.pass_cost.estimate(1, 1) or UNMEASURED_PASS_S)
        now = self.clock()
        ready_ids = {request.request_id for request in ready}
        waiting = [r for r in self.requests.values() if r.request_id not in ready_ids]
        return any(now - request.waiting_since < window for request in waiting)

    def plan(self, batch: list[ServerRequest], is_solo_pass: bool = False) -> list[RoundPlan]:
        """Each request's round, cut to the pass width that pays (verifier.pass_cost.best_width);
        those served go to the back of the round-robin."""
        for request in batch:
            self.order.remove(request.request_id)
            self.order.append(request.request_id)
        plans = [request.plan_round(self.own_lookup, self.config.max_draft_tokens) for request in batch]
        if not self.config.is_width_fitted:
            return plans
        cost = self.solo_pass_cost if is_solo_pass else self.pass_cost
        if is_solo_pass and cost.coefficients is None:  # time plain and wide solo passes, alternately
            self.was_plain = not self.was_plain
            return [plan.cut(0) for plan in plans] if self.was_plain else plans
        # planning_yield: a row cut to its root for long is given its drafts again, to be measured
        widths = best_widths([p.num_draft_tokens for p in plans], [r.planning_yield() for r in batch], cost,
                             self.skips_padding)
        return [plan.cut(width - 1) for plan, width in zip(plans, widths)]

    def record_pass(self, batch: list[ServerRequest], widths: list[int], seconds: float,
                    is_solo_pass: bool = False) -> None:
        """A solo pass (on the drafter's threads too) is timed apart from passes while drafting;
        its size is the width it computed (verifier.pass_cost.best_widths)."""
        widest = max(widths)
        computed = sum(widths) / len(widths) if self.skips_padding else widest
        padding = len(widths) * widest - sum(widths) if self.skips_padding else 0
        (self.solo_pass_cost if is_solo_pass else self.pass_cost).observe(len(batch), computed, seconds, padding)
        mean_yield = sum(r.draft_yield for r in batch) / len(batch)
        self.recent_yield += YIELD_SMOOTHING * (mean_yield - self.recent_yield)
