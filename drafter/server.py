"""The drafter process loop: owns the socket to the verifier, never a tensor."""
from __future__ import annotations

import json
import logging
import time
import uuid

import zmq

from drafter.engine import DraftEngine
from drafter.outcomes import outcome_rank
from drafter.session import DraftBlock
from drafter.scheduler import DraftScheduler, DrafterRequest
from kvcache.slots import NoFreeSlot
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Agreement, Close, Draft, Error, ErrorCode, Hello, HelloAck, Open, Resync, Verdict
from protocol.rules import is_usable_at
from protocol.curve import secure_client
from protocol.sockets import make_socket

log = logging.getLogger("ouroboros.drafter")
BASE_TAIL = 8  # committed tokens echoed in each Draft so the verifier can check the base

class DrafterServer:
    def __init__(self, engine: DraftEngine, endpoint: str, tokenizer_fingerprint: str, vocab_size: int,
                 curve_keys: str | None = None) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.hello = Hello(drafter_id=uuid.uuid4().hex, vocab_size=vocab_size,
                           tokenizer_fingerprint=tokenizer_fingerprint, max_draft_length=engine.config.gamma,
                           max_sessions=engine.slots.num_slots)
        self.refusal: str | None = None  # why the verifier refused this drafter (it then stops)
        self.scheduler = DraftScheduler(engine)
        self.requests = self.scheduler.requests  # read here; added and removed by the scheduler
        self.is_acknowledged = False
        self.last_hello = 0.0  # when Hello was last sent (again until acknowledged)
        self.record = open(engine.config.record_rounds, "a", buffering=1) if engine.config.record_rounds else None
        self.is_running = True
        self.ctx = zmq.Context.instance()
        self.socket = make_socket(self.ctx, zmq.DEALER, hwm=10_000)
        if curve_keys is not None:
            secure_client(self.socket, curve_keys)

    def serve_loop(self) -> None:
        """Receive, then advance: one iteration per draft pass."""
        self.socket.connect(self.endpoint)
        log.info("saying Hello to the verifier at %s", self.endpoint)
        self.send(self.hello)
        self.last_hello = time.monotonic()
        while self.is_running:
            self.receive()
            self.advance()

    def advance(self) -> None:
        """Schedule (drafter.scheduler.plan), send the blocks ready (the verifier may be waiting
        for them), run one draft pass, send what it judged."""
        ready, batch, tree = self.scheduler.plan()
        for request in ready:
            self.send_block(request)
        self.run(batch, tree)
        for request in batch:
            self.send_agreement(request)

    def receive(self) -> None:
        """What the verifier sent (waiting briefly when there is nothing to draft); Hello again
        until it is acknowledged, since the verifier may not have been listening yet."""
        if self.socket.poll(0 if self.scheduler.is_busy() else 50):
            self.drain()
        if not self.is_acknowledged and time.monotonic() - self.last_hello > 1.0:
            self.send(self.hello)
            self.last_hello = time.monotonic()

    def drain(self, limit: int = 256) -> None:
        for _ in range(limit):
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(frame)
            except ProtocolError as exc:
                log.warning("dropped a malformed message from the verifier: %s", exc)
                continue
            handler = getattr(self, f"handle_{type(msg).__name__.lower()}", None)
            if handler is None:
                log.warning("ignored an unexpected %s from the verifier", type(msg).__name__)
                continue
            handler(msg)

    def send(self, msg) -> None:
        try:
            self.socket.send(encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("verifier link full: dropped a %s", type(msg).__name__)

    # ---- handlers ----
    def handle_helloack(self, msg: HelloAck) -> None:
        self.engine.limit_vocab(msg.vocab_size)  # the pair may differ by padding rows: propose target ids only
        self.is_acknowledged = True

    def handle_error(self, msg: Error) -> None:
        if msg.code == ErrorCode.REFUSED:
            self.refusal = f"the verifier refused this drafter: {msg.message}"
            self.is_running = False
        else:
            log.warning("error from the verifier: %s: %s", msg.code, msg.message)

    def handle_open(self, msg: Open) -> None:
        """A new request, or a re-sync: the verifier's committed tokens are the truth. A re-synced
        request's old session goes first, so its KV slot serves the new one."""
        self.scheduler.remove(msg.request_id)
        try:
            session = self.engine.open(msg.token_ids, msg.draft_length)
        except NoFreeSlot as exc:  # the verifier opened more than Hello.max_sessions at once
            log.error("cannot draft for %s: %s", msg.request_id, exc)
            return
        self.scheduler.add(DrafterRequest(msg.request_id, session, len(msg.token_ids), msg.max_new_tokens,
                                          next_base=len(msg.token_ids)))

    def handle_close(self, msg: Close) -> None:
        self.scheduler.remove(msg.request_id)

    def handle_verdict(self, msg: Verdict) -> None:
        """Sync to the verified text, learn from what the target checked (the verdict says how
        much of the trunk that was), and keep the drafts the verifier can still use."""
        request = self.requests.get(msg.request_id)
        if request is None:
            return
        session = request.session
        base = msg.committed_length - len(msg.appended)
        if base != session.num_committed:  # a verdict went missing: the verifier holds the truth
            log.warning("verdict for %s at base %d but drafter is at %d: asking for a re-sync",
                        msg.request_id, base, session.num_committed)
            self.handle_close(Close(request_id=msg.request_id))
            self.send(Resync(request_id=msg.request_id))
            return
        hits = session.num_outcome_hits
        if log.isEnabledFor(logging.DEBUG) and session.outcome_base is not None:
            log.debug("verdict %s lands at +%d on %s; the tree held %s", msg.request_id[:8], len(msg.appended),
                      msg.appended[-1], [(b.position - base, b.tokens[0], len(b.tokens) - 1) for b in session.outcomes])
        if self.record is not None:  # what the verdict will replace, for --record-rounds
            chain = session.tokens[base : base + msg.num_trunk_verified + 1]
            candidates = {p: session.candidates[p] for p in range(base, base + len(chain)) if p in session.candidates}
        kept = self.engine.sync(session, msg.appended)
        is_hit = session.num_outcome_hits > hits  # the speculation cache held this outcome's block
        self.engine.ask(session, msg.draft_length)
        block = _verified_block(request, base)
        if block is not None:
            trunk = block.trunk[: msg.num_trunk_verified]
            self.engine.learn(trunk, msg.num_trunk_accepted, msg.trunk_predictions, msg.branch_predictions)
        if self.record is not None:
            self.record_round(request, msg, base, chain, candidates, block, is_hit)
        length = msg.committed_length
        useful = {b: blk for b, blk in request.sent.items() if is_usable_at(b, len(blk.trunk), length)}
        if log.isEnabledFor(logging.DEBUG):
            log.debug("verdict %s: %d -> %d tokens, kept %s, drafts out %s, still usable %s, next base %d%s",
                      msg.request_id[:8], base, length, kept, {b: len(x.trunk) for b, x in request.sent.items()},
                      sorted(useful), request.next_base, ", resting" if request.is_resting else "")
        if kept and useful and not is_hit:  # a hit left the chain those blocks were drafted on
            request.sent = useful
        else:
            # a pre-draft not yet sent still counts as drafted ahead if its base came true
            request.is_drafting_ahead = is_hit or request.is_drafting_ahead and kept and request.next_base == length
            request.sent = {}
            request.next_base = length
        if is_hit and request.budget(length) > 0:
            self.send_block(request)  # at once, as far as the branch got: the verifier waits for it
        self.send_agreement(request)

    def record_round(self, request: DrafterRequest, msg: Verdict, base: int, chain: list[int],
                     candidates: dict, block: DraftBlock | None, is_hit: bool) -> None:
        """One JSON line for bench.simulate: the round's trunk (verified) and what was committed,
        where the outcome ranked among the likely ones, whether the cache held it, the pass width
        the block asked for, the draft and tree passes run since the previous verdict, and the
        time since it (the round as this side saw it)."""
        session = request.session
        rank = outcome_rank(base, chain, candidates, session.acceptance, msg.appended, msg.num_trunk_verified)
        passes, now = (session.num_passes, session.num_tree_passes), time.monotonic()
        interval = None if request.last_verdict is None else round(1000 * (now - request.last_verdict), 2)
        width = 1 + msg.num_trunk_verified + (sum(len(b) for b in block.branches) if block is not None else 0)
        g = msg.num_trunk_verified  # the chain's own outcome: the whole trunk, then the draft's next token
        own_bonus = len(msg.appended) == g + 1 and msg.num_trunk_accepted == g and chain[g:] == msg.appended[g:]
        self.record.write(json.dumps({
            "request": request.request_id, "trunk": msg.num_trunk_verified, "accepted": msg.num_trunk_accepted,
            "committed": len(msg.appended), "rank": rank, "own_bonus": own_bonus, "hit": is_hit, "width": width,
            "next_length": msg.draft_length, "draft_passes": passes[0] - request.passes_at_verdict[0],
            "tree_passes": passes[1] - request.passes_at_verdict[1], "round_ms": interval}) + "\n")
        request.passes_at_verdict, request.last_verdict = passes, now

    # ---- drafting ----
    def run(self, batch: list[DrafterRequest], tree: DrafterRequest | None) -> None:
        """One draft pass (drafter.scheduler.plan): the batch's next step, else a tree of
        outcomes for one request's next round."""
        if batch:
            self.engine.step_batch([request.session for request in batch])
        elif tree is not None:
            self.engine.step_outcomes(tree.session, self.scheduler.outcome_depth(tree))

    def send_agreement(self, request: DrafterRequest) -> None:
        """What the draft would have proposed at the positions committed since (engine.sync and
        the passes judge them): the verifier's evidence for its draft length."""
        judged = self.engine.take_agreement(request.session)
        if judged is not None:
            self.send(Agreement(request_id=request.request_id, start=judged[0], agreed=judged[1]))

    def send_block(self, request: DrafterRequest) -> None:
        """Send the Draft for next_base, then assume it is accepted and move next_base past it."""
        session, base = request.session, request.next_base
        block = self.engine.block_at(session, base, request.budget(base))
        request.sent[base] = block
        log.debug("draft %s at base %d (committed %d): trunk %d, %d branches", request.request_id[:8], base,
                  session.num_committed, len(block.trunk), len(block.branches))
        self.send(Draft(
            request_id=request.request_id, base_length=base,
            base_tail=session.tokens[max(0, base - BASE_TAIL) : base], trunk=block.trunk, branches=block.branches,
            drafted_ahead=request.is_drafting_ahead or base > session.num_committed,
        ))
        request.is_drafting_ahead = False
        # assume the trunk is accepted and the target's extra token is the draft's own next one
        request.next_base = base + len(block.trunk) + 1


def _verified_block(request: DrafterRequest, base: int) -> DraftBlock | None:
    """The block the verifier just checked at `base`: sent there, or rebased onto it (the rule
    in protocol.rules)."""
    for sent_base, block in sorted(request.sent.items()):
        if is_usable_at(sent_base, len(block.trunk), base):
            del request.sent[sent_base]
            return DraftBlock(block.trunk[base - sent_base :], block.branches)
    return None
