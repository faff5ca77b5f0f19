"""The drafter's schedule: which requests get a block sent now and which get the next draft pass
(the verifier's waits first, then pre-drafts), round-robin. Bookkeeping, no sockets, no tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

from drafter.engine import DraftEngine
from drafter.session import DraftBlock, DraftSession
from protocol.rules import draft_budget

MAX_AHEAD = 2  # drafts outstanding per request: the one being verified and one pre-draft
# A request asked for no draft still has its committed tokens fed to the draft, to keep its
# cache and its Agreement in step, in passes of at least this many: on a shared CPU such a pass
# takes a core from the target's pass beside it, so they stay few (about one per second of text
# here), and the verifier's decision needs no fresher evidence than that.
CATCH_UP_TOKENS = 32


@dataclass
class DrafterRequest:
    request_id: str
    session: DraftSession
    num_prompt: int
    max_new_tokens: int
    next_base: int  # committed length the next Draft assumes
    sent: dict[int, DraftBlock] = field(default_factory=dict)  # base length -> block sent
    is_drafting_ahead: bool = False  # the block on next_base began before next_base was committed
    passes_at_verdict: tuple[int, int] = (0, 0)  # the session's (draft, tree) passes at the last verdict
    last_verdict: float | None = None  # when the last verdict came (time.monotonic)

    @property
    def is_resting(self) -> bool:
        """The verifier asked for no draft (Verdict.draft_length 0): no round waits for one."""
        return self.session.draft_length == 0

    def budget(self, base: int) -> int:
        """Draft tokens still useful at `base`: the verifier adds one token itself."""
        return draft_budget(self.max_new_tokens, base - self.num_prompt)

    @property
    def is_waited_on(self) -> bool:
        """Its next block is for text already committed: the verifier waits for it."""
        return self.next_base <= self.session.num_committed


class DraftScheduler:
    def __init__(self, engine: DraftEngine) -> None:
        self.engine = engine
        self.requests: dict[str, DrafterRequest] = {}
        self.order: list[str] = []  # round-robin over requests

    def add(self, request: DrafterRequest) -> None:
        if request.request_id in self.requests:  # re-opened (a re-sync): the old session is done
            self.engine.close(self.requests[request.request_id].session)
        self.requests[request.request_id] = request
        if request.request_id not in self.order:
            self.order.append(request.request_id)

    def remove(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            self.engine.close(request.session)
        if request_id in self.order:
            self.order.remove(request_id)

    def has_work(self, request: DrafterRequest) -> bool:
        """A block to draft or send. Resting (asked for no draft), only a catch-up pass once
        CATCH_UP_TOKENS committed tokens wait to be judged; otherwise the loop sleeps in poll
        instead of taking the target's machine. Nor, with --pre-drafts off, a step ahead of
        the committed text."""
        if request.is_resting:
            return self.engine.lags(request.session, CATCH_UP_TOKENS)
        if len(request.sent) >= MAX_AHEAD or request.budget(request.next_base) <= 0:
            return False
        if self.engine.has_cache and request.sent and not request.is_waited_on:
            # the speculation cache drafts ahead for every likely outcome, the chain's own among
            # them: the chain only reaches the draft's token after the trunk (its candidates)
            return len(request.session.tokens) < request.next_base
        # --pre-drafts off: nothing to draft while the verifier checks this request's last block
        return self.engine.config.pre_drafts != "off" or request.is_waited_on or not self.needs_step(request)

    def needs_step(self, request: DrafterRequest) -> bool:
        """True while the block on next_base is shorter than wanted (and the model can go on)."""
        session, base = request.session, request.next_base
        if request.is_resting:
            return self.engine.lags(session, CATCH_UP_TOKENS)
        wanted = self.engine.goal(session, request.budget(base))
        return len(session.tokens) - base < wanted and self.engine.can_step(session)

    def outcome_depth(self, request: DrafterRequest) -> int:
        """Tokens each outcome branch drafts: the asked length, within the budget after it."""
        return self.engine.goal(request.session, request.budget(request.session.num_committed + 1))

    def needs_outcomes(self, request: DrafterRequest) -> bool:
        """The speculation cache has a pass to run for this request: the block under verification
        (sent on the committed length) has outcome branches still to draft (drafter.outcomes)."""
        session = request.session
        block = request.sent.get(session.num_committed)
        if not self.engine.has_cache or request.is_resting or block is None or not block.trunk:
            return False
        if not self.engine.plan_outcomes(session, session.num_committed, len(block.trunk)):
            return False
        return bool(self.engine.outcomes_pending(session, self.outcome_depth(request)))

    def plan(self) -> tuple[list[DrafterRequest], list[DrafterRequest], DrafterRequest | None]:
        """(blocks ready to send now, the requests for one batched draft pass: those the verifier
        waits on if any need a step, else pre-drafts; at most --draft-batch; else the request whose
        outcome branches get the next tree pass). Those stepped go to the back of the round-robin."""
        ready, waited_on, ahead = [], [], []
        for request_id in self.order:
            request = self.requests[request_id]
            if not self.has_work(request):
                continue
            if not self.needs_step(request):
                ready.append(request)
            else:
                (waited_on if request.is_waited_on and not request.is_resting else ahead).append(request)
        batch = (waited_on or ahead)[: self.engine.config.max_batch]
        tree = None if batch or ready else next(
            (self.requests[r] for r in self.order if self.needs_outcomes(self.requests[r])), None)
        for request in batch:
            request.is_drafting_ahead |= not request.is_waited_on
        for request in batch + ([tree] if tree else []):
            self.order.remove(request.request_id)
            self.order.append(request.request_id)
        return ready, batch, tree

    def is_busy(self) -> bool:
        return any(self.has_work(request) or self.needs_outcomes(request) for request in self.requests.values())
