"""The verifier process loop, in four steps a pass (schedule, run, postprocess, send) after taking
what the sockets hold (verifier.receiving): the front door for clients and the link to the drafter.
Owns sockets, never a tensor: the engine takes and returns token lists."""
from __future__ import annotations

import logging
import time
from collections import deque

import zmq

from protocol.curve import secure_server, start_authenticator
from protocol.messages import Close, Done, Error, ErrorCode, FinishReason, Generate, Open, Status, Tokens, Verdict
from verifier.client_link import ClientLink
from verifier.config import VerifierConfig
from verifier.drafter_link import DrafterLink
from verifier.engine import TargetEngine
from verifier.receiving import Receiving
from verifier.requests import RoundPlan, ServerRequest
from verifier.scheduler import Scheduler
from verifier.stats import ServerStats
from verifier.stopping import finish

log = logging.getLogger("ouroboros.verifier")


class VerifierServer(Receiving):
    def __init__(self, engine: TargetEngine, tokenizer, config: VerifierConfig, client_endpoint: str,
                 drafter_endpoint: str, curve_keys: str | None = None, tokenizer_fingerprint: str = "",
                 threads: int | None = None, solo_threads: int | None = None, takes_turns: bool = False) -> None:
        """`threads` for passes while the drafter drafts, `solo_threads` while it rests on every
        request or is absent (the cores it leaves free); None: leave torch's setting alone.
        `takes_turns`: the drafter drafts only while we wait (--pre-drafts off), so a pass with every
        wanted draft in hand has its cores too."""
        self.engine = engine
        self.threads = threads
        self.solo_threads = solo_threads or threads
        self.takes_turns = takes_turns
        self.last_round_end: float | None = None  # None: no request was open since the last round
        self.prefill_s = 0.0  # prefill time since the last round: not a wait for drafts
        self.tokenizer = tokenizer
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.config = config
        self.scheduler = Scheduler(config, skips_padding=engine.skips_padding)
        self.speculation = self.scheduler.speculation  # the draft lengths (verifier.speculation)
        self.stats = ServerStats()
        self.requests = self.scheduler.requests  # read here; added and removed by the scheduler
        self.is_running = True
        self.ctx = zmq.Context.instance()
        self.client_link = ClientLink(self.ctx)
        self.clients = self.client_link.socket
        self.queue: deque[tuple[bytes, Generate]] = deque()  # admitted past max_sessions, up to max_queue
        self.link = DrafterLink(self.ctx, config.draft_timeout_s)
        self.authenticator = None
        if curve_keys is not None:  # only holders of the client key may submit work or draft
            self.authenticator = start_authenticator(self.ctx, curve_keys)
            secure_server(self.clients, curve_keys)
            secure_server(self.link.socket, curve_keys)
        self.clients.bind(client_endpoint)
        self.link.socket.bind(drafter_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.clients, zmq.POLLIN)
        self.poller.register(self.link.socket, zmq.POLLIN)

    def wait_for_drafter(self, timeout_s: float) -> bool:
        """The ready handshake: True once a drafter said Hello and was acknowledged."""
        deadline = time.monotonic() + timeout_s
        while self.link.identity is None and self.is_running and time.monotonic() < deadline:
            if self.link.socket.poll(100):
                self.drain_drafter()
        return self.link.identity is not None

    def serve_loop(self) -> None:
        """Receive, schedule, run, postprocess, send: one iteration per pass."""
        wait_ms = 20
        while self.is_running:
            self.receive(wait_ms)
            batch, wait_ms = self.schedule()
            if batch:
                rounds = self.run(batch)
                if rounds:
                    self.send(self.postprocess(rounds))

    # ---- rounds ----
    def schedule(self) -> tuple[list[ServerRequest], int]:
        """The requests to verify now (none while a part batch gathers), and how long the next
        receive may wait: not at all with work ready, briefly while gathering."""
        ready = self.scheduler.pick_ready(self.link.is_absent)
        if not ready:
            return [], 20
        if self.scheduler.is_gathering(ready, self.link.is_absent):
            return [], 1
        return ready, 0

    def run(self, requests: list[ServerRequest]) -> list[tuple] | None:
        """One round for each request, all verified in one batched target pass: (request, plan,
        result) each, or None when the pass failed (those requests end with the error)."""
        is_solo_pass = self.pick_threads()
        plans = self.scheduler.plan(requests)
        self.observe_wait(requests, plans)
        now = time.monotonic()
        for request in requests:
            request.round_wait_s = now - request.waiting_since
        started = time.perf_counter()
        try:
            results = self.engine.verify_batch([(r.session, p.trunk, p.branches, r.sampling, p.lookup)
                                                for r, p in zip(requests, plans)])
        except Exception as exc:  # the process survives; these requests fail loudly
            log.exception("verification failed for %s", [r.request_id for r in requests])
            for request in requests:
                self.end(request, Error(request_id=request.request_id, code=ErrorCode.INTERNAL, message=str(exc)))
            return None
        widths, seconds = [r.num_nodes for r in results], time.perf_counter() - started
        self.speculation.observe_pass(widths, seconds, is_drafting=not is_solo_pass)
        self.stats.record_pass(seconds, self.link.is_absent)
        log.debug("pass of %d rows x %d tokens (%d real): %.0f ms, %d committed", len(requests), max(widths),
                  sum(widths), 1000 * seconds, sum(len(result.appended) for result in results))
        return list(zip(requests, plans, results))

    def postprocess(self, rounds: list[tuple]) -> list[tuple]:
        """Commit each round: what verification shows the decision, the new tokens (cut at the
        budget, a stop token or a stop string), their text, and each request's next draft
        length. Returns (request, plan, result, tokens to stream, finish reason, next length)."""
        requests = [request for request, _, _ in rounds]
        for request, plan, result in rounds:
            self.speculation.observe_lookup(request.request_id, request.committed_length - len(result.appended),
                                            _num_matching(plan.lookup, result.appended))
        lengths = self.scheduler.next_lengths(requests, [bool(plan.trunk) for _, plan, _ in rounds])
        committed = []
        for (request, plan, result), length in zip(rounds, lengths):
            log.debug("round %s: waited %.1f ms for its draft (%s), trunk %d, %d accepted", request.request_id[:8],
                      1000 * request.round_wait_s, "drafted ahead" if plan.is_predraft else "drafted on the verdict",
                      len(plan.trunk), result.num_trunk_accepted)
            request.stats.record(len(plan.trunk), result, plan.is_predraft, has_draft=plan.has_draft,
                                 wait_s=request.round_wait_s)
            self.stats.record_round(len(plan.trunk), result.num_trunk_accepted, plan.is_predraft, request.round_wait_s)
            kept, reason = finish(result.appended, request.num_output, request.max_new_tokens, request.stop_token_ids)
            previous = request.num_output
            request.num_output += len(kept)
            request.waiting_since = time.monotonic()
            self.stats.generation_tokens += len(kept)
            if request.commit_text(kept, is_final=reason is not None):
                reason = FinishReason.STOP
            committed.append((request, plan, result, kept[: max(request.num_output - previous, 0)], reason, length))
        return committed

    def send(self, committed: list[tuple]) -> None:
        """Stream each round's tokens; then end the request (Done) or tell the drafter the
        verdict and how long its next draft should be."""
        for request, plan, result, tokens, reason, length in committed:
            if request.request_id not in self.requests:
                continue  # freed meanwhile: its client vanished
            self.stream(request, tokens, is_final=reason is not None)
            if request.request_id not in self.requests:
                continue  # the client vanished mid-stream: its session is already freed
            if reason is not None:
                seed = request.sampling.seed if request.sampling else None
                self.end(request, Done(request_id=request.request_id, finish_reason=reason, seed=seed,
                                       prompt_tokens=request.session.num_prompt,
                                       completion_tokens=request.num_output, metrics=self.metrics_of(request)))
                continue
            if not request.is_on_drafter:
                continue  # the drafter has no room for it (open_admitted)
            request.draft_length = length
            request.may_come_ahead = bool(plan.trunk)  # the drafter pre-drafts for a trunk's outcomes
            self.link.send(Verdict(request_id=request.request_id, committed_length=request.committed_length,
                                    appended=result.appended, num_trunk_verified=len(plan.trunk),
                                    num_trunk_accepted=result.num_trunk_accepted,
                                    trunk_predictions=result.trunk_predictions,
                                    branch_predictions=result.branch_predictions, draft_length=length))
        self.last_round_end = time.monotonic() if self.requests else None
        self.open_admitted()  # those admitted from the queue as others ended

    def observe_wait(self, requests: list[ServerRequest], plans: list[RoundPlan]) -> None:
        """How long the target stood idle before this pass, prefills excluded: the cost on the
        critical path of the drafts these requests were asked for (the longest of them), and
        whether they could have been drafted ahead and were (verifier.pass_cost.DraftWait)."""
        if self.last_round_end is not None and not self.link.is_absent:
            idle = time.monotonic() - self.last_round_end - self.prefill_s
            drafting = [(request, plan) for request, plan in zip(requests, plans) if request.draft_length > 0]
            self.speculation.wait.observe(max(request.draft_length for request in requests), idle,
                                          could_be_ahead=all(request.may_come_ahead for request, _ in drafting),
                                          was_ahead=bool(drafting) and all(plan.is_predraft for _, plan in drafting))
        self.prefill_s = 0.0

    def pick_threads(self) -> bool:
        """Threads for the next pass or prefill: the drafter's cores too while no request waits
        for a draft or it is absent (True then), or, taking turns, has nothing to draft."""
        is_drafter_idle = self.link.is_absent or self.scheduler.is_drafter_idle
        is_drafter_waiting = self.takes_turns and self.scheduler.holds_every_draft
        if self.threads is not None:
            self.engine.use_threads(self.solo_threads if is_drafter_idle or is_drafter_waiting else self.threads)
        return is_drafter_idle

    # ---- sending ----
    def stream(self, request: ServerRequest, tokens: list[int], is_final: bool) -> None:
        """Send committed tokens with their text delta (see ServerRequest.take_chunk)."""
        chunk = request.take_chunk(tokens, is_final)
        if chunk is None or self.reply(request.client, Tokens(request_id=request.request_id, token_ids=chunk[0],
                                                               text=chunk[1])):
            return
        if self.client_link.is_gone():  # the client is gone: all its requests go
            self.handle_disconnect(request.client)
        else:  # its queue is full (one socket may carry many users, e.g. the HTTP door): this one fails
            self.end(request, Error(request_id=request.request_id, code=ErrorCode.INTERNAL,
                                    message="could not send tokens to the client: its queue is full"))

    def end(self, request: ServerRequest, last: Done | Error | None) -> None:
        self.scheduler.remove(request.request_id)
        self.engine.close(request.session)  # its KV slot, free for the next request admitted below
        if last is not None:
            self.reply(request.client, last)
        self.link.send(Close(request_id=request.request_id))
        while self.queue and len(self.requests) < self.config.max_sessions:
            self.admit(*self.queue.popleft())

    def decode_text(self, tokens: list[int]) -> str:
        """Client text never shows special tokens: the stop token ends the text, not part of it."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def status(self, request_id: str) -> Status:
        return self.stats.as_status(request_id, len(self.requests), len(self.queue), self.config,
                                    is_drafter_present=not self.link.is_absent)

    def metrics_of(self, request: ServerRequest) -> dict[str, float]:
        """The request's speculative metrics, and how long the drafter has been up (-1: none)."""
        return request.stats.as_metrics(request.num_output) | {"drafter_uptime_s": self.link.uptime_s()}

    def open_admitted(self) -> None:
        """Tell the drafter of the requests admitted since: only once a burst of arrivals is all
        prefilled, so each prefill runs while the drafter is idle, on its cores too (pick_threads);
        and no more at once than it has room for (Hello.max_sessions). The rest go to the target
        alone until a request there ends."""
        room = self.link.max_sessions - sum(request.is_on_drafter for request in self.requests.values())
        for request in [request for request in self.requests.values() if not request.is_on_drafter][: max(room, 0)]:
            self.open_on_drafter(request)

    def open_on_drafter(self, request: ServerRequest) -> None:
        self.link.gave_work()
        request.is_on_drafter = True
        request.draft_length = self.scheduler.next_lengths([request])[0]
        request.may_come_ahead = False  # the first block is drafted on the prompt
        request.waiting_since = time.monotonic()  # its first draft is due from now
        self.link.send(Open(request_id=request.request_id, token_ids=list(request.session.tokens),
                             max_new_tokens=request.max_new_tokens - request.num_output,
                             draft_length=request.draft_length))

    def reply(self, identity: bytes, msg) -> bool:
        return self.client_link.send(identity, msg)


def _num_matching(guess, text) -> int:
    """Leading tokens of `guess` that `text` has too."""
    n = 0
    while n < min(len(guess), len(text)) and guess[n] == text[n]:
        n += 1
    return n
