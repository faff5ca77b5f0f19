"""Which requests take the next round, and how wide their pass is: bookkeeping, no tensors."""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from protocol.prompt_lookup import NgramIndex, lookup_continuation
from verifier.config import VerifierConfig
from verifier.requests import RoundPlan, ServerRequest
from verifier.speculation import SpeculationDecision



class Scheduler:
    def __init__(self, config: VerifierConfig, clock: Callable[[], float] = time.monotonic,
                 skips_padding: bool = False) -> None:
        self.config = config
        self.clock = clock  # injected in tests; the same clock as ServerRequest.waiting_since
        self.requests: dict[str, ServerRequest] = {}
        self.order: list[str] = []  # round-robin: the requests served last go to the back
        self.speculation = SpeculationDecision(skips_padding)  # each round's draft lengths
        self.lookup_indexes: dict[str, NgramIndex] = {}  # each request's committed text, for own_lookup

    @property
    def is_drafter_idle(self) -> bool:
        """No request waits for a draft: each was asked for none, or the drafter was not yet told
        of it (or none is open), so the cores it drafts on are free for the target's work."""
        return all(request.draft_length == 0 or not request.is_on_drafter for request in self.requests.values())

    @property
    def holds_every_draft(self) -> bool:
        """Every request that waits for a draft has one that fits: a drafter that drafts only
        while we wait (--pre-drafts off) is idle now."""
        return all(request.draft_length == 0 or not request.is_on_drafter or request.has_draft_candidate()
                   for request in self.requests.values())

    def add(self, request: ServerRequest) -> None:
        self.speculation.open(request.request_id)
        self.requests[request.request_id] = request
        self.order.append(request.request_id)

    def remove(self, request_id: str) -> None:
        self.speculation.close(request_id)
        self.requests.pop(request_id, None)
        self.lookup_indexes.pop(request_id, None)
        if request_id in self.order:
            self.order.remove(request_id)

    def own_lookup(self, tokens: list[int], index: NgramIndex | None = None) -> list[int]:
        """The verifier's own prompt-lookup branch for a round without a draft; with a
        request's `index` (its committed text so far) the work is that of the new tokens."""
        c = self.config
        if index is not None:
            return index.lookup(tokens, len(tokens), c.own_lookup_tokens)
        return lookup_continuation(tokens, c.lookup_ngram, c.lookup_min_ngram, c.own_lookup_tokens)

    def pick_ready(self, is_drafter_absent: bool) -> list[ServerRequest]:
        """Up to --max-batch requests ready for a round (a draft fits, or none is coming),
        fairest first."""
        now = self.clock()
        ready = [self.requests[r] for r in self.order if self.is_ready(self.requests[r], now, is_drafter_absent)]
        return ready[: self.config.max_batch]

    def is_ready(self, request: ServerRequest, now: float, is_drafter_absent: bool) -> bool:
        return (request.has_draft_candidate() or is_drafter_absent or request.needs_no_draft()
                or request.draft_length == 0  # asked for no draft: none is coming
                or now - request.waiting_since > self.config.draft_timeout_s)

    def next_lengths(self, batch: list[ServerRequest], verified_trunk: list[bool] | None = None) -> list[int]:
        """Each request's next draft length (verifier.speculation; `verified_trunk`: whether its
        round just verified a trunk); none where only the target's own token is left to produce."""
        lengths = self.speculation.choose([request.request_id for request in batch], verified_trunk)
        return [0 if request.needs_no_draft() else length for request, length in zip(batch, lengths)]

    def is_gathering(self, ready: list[ServerRequest], is_drafter_absent: bool) -> bool:
        """Hold a part batch while a request whose verdict just went out may still join it.
        Rule: a row that joins costs the pass a little (one more row); one left out later
        costs a pass of its own (at least c(1, 1)) and splits the batch again, so wait for it
        up to half the measured cost of a one-token pass (no wait before a pass was timed)."""
        if not ready or len(ready) >= self.config.max_batch or is_drafter_absent:
            return False
        window = 0.5 * (self.speculation.passes.one_token_pass() or 0.0)
        now = self.clock()
        ready_ids = {request.request_id for request in ready}
        waiting = [r for r in self.requests.values() if r.request_id not in ready_ids]
        return any(now - request.waiting_since < window for request in waiting)

    def plan(self, batch: list[ServerRequest]) -> list[RoundPlan]:
        """Each request's round (ServerRequest.plan_round); those served go to the back of the
        round-robin."""
        for request in batch:
            self.order.remove(request.request_id)
            self.order.append(request.request_id)
        return [request.plan_round(partial(self.own_lookup, index=self._lookup_index(request.request_id)),
                                   self.config.max_draft_tokens) for request in batch]

    def _lookup_index(self, request_id: str) -> NgramIndex:
        if request_id not in self.lookup_indexes:
            self.lookup_indexes[request_id] = NgramIndex(self.config.lookup_ngram, self.config.lookup_min_ngram)
        return self.lookup_indexes[request_id]
