"""The drafter's schedule: which requests get a block sent now and which get the next draft pass
(the verifier's waits first, then pre-drafts), round-robin. Bookkeeping, no sockets, no tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

from drafter.engine import DraftBlock, DraftEngine, DraftSession
from protocol.rules import draft_budget

MAX_AHEAD = 2  # drafts outstanding per request: the one being verified and one pre-draft


@dataclass
class DrafterRequest:
    request_id: str
    session: DraftSession
    num_prompt: int
    max_new_tokens: int
    next_base: int  # committed length the next Draft assumes
    sent: dict[int, DraftBlock] = field(default_factory=dict)  # base length -> block sent
    is_drafting_ahead: bool = False  # the block on next_base began before next_base was committed
    is_resting: bool = False  # the last verdict said the verifier will not wait for its drafts

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
        """A block to draft or send. None while resting: the verifier said it will not wait for
        this request's drafts (Verdict.wants_draft), so no draft pass runs for it and, with
        nothing else to do, the loop sleeps in poll instead of taking the target's machine. Nor,
        with --no-pre-drafts, a step ahead of the committed text."""
        if request.is_resting or len(request.sent) >= MAX_AHEAD or request.budget(request.next_base) <= 0:
            return False
        # --pre-drafts off: nothing to draft while the verifier checks this request's last block
        return self.engine.config.pre_drafts != "off" or request.is_waited_on or not self.needs_step(request)

    def needs_step(self, request: DrafterRequest) -> bool:
        """True while the block on next_base is shorter than wanted (and the model can go on)."""
        session, base = request.session, request.next_base
        # gated (no trunk will be sent): ready at once if the text up to base is known
        policy = self.engine.policy
        gated_and_known = policy.is_gated(session.policy) and len(session.tokens) >= base
        wanted = 0 if gated_and_known else policy.goal(session.policy, request.budget(base))
        return len(session.tokens) - base < wanted and self.engine.can_step(session)

    def plan(self) -> tuple[list[DrafterRequest], list[DrafterRequest]]:
        """(blocks ready to send now, the requests for one batched draft pass: those the verifier
        waits on if any need a step, else pre-drafts; at most --draft-batch). Those stepped go to
        the back of the round-robin."""
        ready, waited_on, ahead = [], [], []
        for request_id in self.order:
            request = self.requests[request_id]
            if not self.has_work(request):
                continue
            if not self.needs_step(request):
                ready.append(request)
            else:
                (waited_on if request.is_waited_on else ahead).append(request)
        batch = (waited_on or ahead)[: self.engine.config.max_batch]
        for request in batch:
            request.is_drafting_ahead |= not request.is_waited_on
            self.order.remove(request.request_id)
            self.order.append(request.request_id)
        return ready, batch

    def is_busy(self) -> bool:
        return any(self.has_work(request) for request in self.requests.values())
