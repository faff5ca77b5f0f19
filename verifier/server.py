"""The verifier process loop: the front door for clients and the link to the drafter.
Owns sockets, never a tensor: the engine takes and returns token lists."""
from __future__ import annotations

import logging
import secrets
import time
from collections import deque

import zmq

from protocol.codec import decode
from protocol.curve import secure_server, start_authenticator
from protocol.errors import ProtocolError
from protocol.messages import (
    Agreement, Cancel, Close, Done, Draft, Error, ErrorCode, FinishReason, Generate, Hello, HelloAck, Open, Resync, Status,
    StatusQuery, Tokens, Verdict,
)
from protocol.validation import validate_generate
from verifier.client_link import ClientLink
from verifier.config import VerifierConfig
from verifier.detokenize import IncrementalText
from verifier.drafter_link import DrafterLink, is_within_vocab
from verifier.engine import TargetEngine
from verifier.requests import ServerRequest
from verifier.scheduler import Scheduler
from verifier.sampling import SamplingParams
from verifier.stats import ServerStats
from verifier.stopping import finish

log = logging.getLogger("ouroboros.verifier")


class VerifierServer:
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
        while self.is_running:
            ready = self.scheduler.pick_ready(self.link.is_absent)
            is_gathering = self.scheduler.is_gathering(ready, self.link.is_absent)
            events = dict(self.poller.poll(1 if is_gathering else 0 if ready else 20))
            if self.clients in events:
                self.drain_clients()
                self.open_admitted()
            if self.link.socket in events:
                self.drain_drafter()
            self.link.check_silence(r.waiting_since for r in self.requests.values())
            batch = self.scheduler.pick_ready(self.link.is_absent)
            if batch and not self.scheduler.is_gathering(batch, self.link.is_absent):
                self.run_rounds(batch)

    # ---- receiving ----
    def drain_clients(self, limit: int = 256) -> None:
        for _ in range(limit):
            try:
                identity, frame = self.client_link.receive()
            except zmq.Again:
                return
            except ValueError:
                continue  # not an identity + one frame: drop it
            try:
                msg = decode(frame)
            except ProtocolError as exc:
                self.reply(identity, Error(request_id="", code=ErrorCode.PROTOCOL, message=str(exc)))
                continue
            if isinstance(msg, Generate):
                self.handle_generate(identity, msg)
            elif isinstance(msg, Cancel):
                self.handle_cancel(identity, msg)
            elif isinstance(msg, StatusQuery):
                self.reply(identity, self.status(msg.request_id))
            else:
                self.reply(identity, Error(request_id=getattr(msg, "request_id", ""), code=ErrorCode.PROTOCOL,
                                           message=f"a client may not send {type(msg).__name__}"))

    def drain_drafter(self, limit: int = 256) -> None:
        for _ in range(limit):
            try:
                identity, frame = self.link.receive()
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                msg = decode(frame)
            except ProtocolError as exc:
                log.warning("dropped a malformed message on the drafter link: %s", exc)
                if "protocol version" in str(exc):  # an old or new peer: say so, in our version
                    self.link.send(Error(request_id="", code=ErrorCode.REFUSED, message=str(exc)), identity)
                continue
            if isinstance(msg, Hello):
                self.handle_hello(identity, msg)
            elif isinstance(msg, Resync) and identity == self.link.identity:
                self.handle_resync(msg)
            elif isinstance(msg, Agreement) and identity == self.link.identity:
                self.speculation.observe_agreement(msg.request_id, msg.start, msg.agreed)
            elif isinstance(msg, Draft) and identity == self.link.identity:
                self.link.heard()
                request = self.requests.get(msg.request_id)
                if request is not None and is_within_vocab(msg, self.engine.vocab_size):
                    request.offer(msg)
            else:
                log.warning("ignored %s from %s on the drafter link", type(msg).__name__, identity.hex())

    # ---- handlers ----
    def handle_hello(self, identity: bytes, msg: Hello) -> None:
        """Tokenizers are compared, not vocabulary sizes: padding rows may differ (docs/architecture.md, "Models")."""
        if msg.tokenizer_fingerprint != self.tokenizer_fingerprint:
            reason = ("the draft's tokenizer differs from the target's (vocabulary or merges): "
                      "pick a draft that shares the target's tokenizer")
            log.error("refused drafter %s: %s", msg.drafter_id, reason)
            self.link.send(Error(request_id="", code=ErrorCode.REFUSED, message=reason), identity)
            return
        is_new = self.link.accept(identity)
        self.link.send(HelloAck(vocab_size=self.engine.vocab_size))
        if is_new:  # (re-)sync: the verifier's committed tokens are the truth
            self.stats.num_drafter_handshakes += 1
            self.speculation.reset_drafter(max(msg.max_draft_length, 0))
            log.info("drafter %s connected; re-syncing %d requests", msg.drafter_id, len(self.requests))
            for request in self.requests.values():
                request.drafts.clear()
                self.open_on_drafter(request)

    def handle_resync(self, msg: Resync) -> None:
        """The drafter lost step with a request: re-open it there from the committed tokens."""
        request = self.requests.get(msg.request_id)
        if request is not None:
            log.info("drafter asked to re-sync %s at %d tokens", msg.request_id, request.committed_length)
            request.drafts.clear()
            self.open_on_drafter(request)

    def handle_generate(self, identity: bytes, msg: Generate) -> None:
        """Admission: refuse bad input, then run it, queue it (bounded), or answer "busy" at once."""
        try:
            if msg.request_id in self.requests or any(q.request_id == msg.request_id for _, q in self.queue):
                raise ProtocolError(f"request_id {msg.request_id!r} is already running")
            validate_generate(msg, self.engine.vocab_size, self.engine.max_context)
        except (ProtocolError, ValueError) as exc:
            self.reply(identity, Error(request_id=msg.request_id, code=ErrorCode.INVALID_REQUEST, message=str(exc)))
            return
        if len(self.requests) < self.config.max_sessions:
            self.admit(identity, msg)
        elif len(self.queue) < self.config.max_queue:
            self.queue.append((identity, msg))
        else:
            self.reply(identity, Error(request_id=msg.request_id, code=ErrorCode.OVERLOADED,
                                       message=f"busy: {len(self.requests)} requests running and {len(self.queue)} "
                                               "queued (--max-sessions, --max-queue)"))

    def admit(self, identity: bytes, msg: Generate) -> None:
        try:  # a text prompt's length is known only once tokenized: the engine checks it
            prompt_ids = list(msg.prompt_ids) or self.tokenizer(msg.prompt, add_special_tokens=False)["input_ids"]
            started = time.monotonic()
            is_solo = self.pick_threads()
            session = self.engine.open(prompt_ids, msg.max_new_tokens)
            log.debug("prefill of %d tokens (%s): %.0f ms", len(prompt_ids), "solo threads" if is_solo else "threads",
                      1000 * (time.monotonic() - started))
            if self.last_round_end is not None:  # between passes: not a wait for drafts (observe_wait)
                self.prefill_s += time.monotonic() - started
        except (ProtocolError, ValueError) as exc:
            self.reply(identity, Error(request_id=msg.request_id, code=ErrorCode.INVALID_REQUEST, message=str(exc)))
            return
        stops = set(msg.stop_token_ids) | set(self.config.stop_token_ids)
        seed = msg.seed if msg.seed is not None else secrets.randbits(31)
        sampling = None if msg.temperature == 0 else SamplingParams(msg.temperature, msg.top_k, msg.top_p, seed)
        request = ServerRequest(msg.request_id, identity, session, msg.max_new_tokens, frozenset(stops), msg.stream,
                                sampling=sampling, stop_strings=tuple(msg.stop),
                                text=IncrementalText(self.decode_text))
        self.scheduler.add(request)  # the drafter hears of it in open_admitted

    def handle_disconnect(self, identity: bytes) -> None:
        """A client went away (its stream became unroutable): free its sessions and caches."""
        self.queue = deque(item for item in self.queue if item[0] != identity)
        for request in [r for r in self.requests.values() if r.client == identity]:
            log.info("client of %s disconnected: request dropped", request.request_id)
            self.end(request, None)

    def handle_cancel(self, identity: bytes, msg: Cancel) -> None:
        self.queue = deque(item for item in self.queue if item[1].request_id != msg.request_id)
        request = self.requests.get(msg.request_id)
        if request is not None and request.client == identity:
            self.end(request, Done(request_id=msg.request_id, finish_reason=FinishReason.CANCELLED,
                                   prompt_tokens=request.session.num_prompt, completion_tokens=len(request.new_tokens),
                                   metrics=self.metrics_of(request)))

    # ---- rounds ----
    def run_rounds(self, requests: list[ServerRequest]) -> None:
        """One round for each request, all verified in one batched target pass; then each one's
        next draft length (verifier.speculation) goes out with its verdict."""
        is_solo_pass = self.pick_threads()
        plans = self.scheduler.plan(requests)
        self.observe_wait(requests)
        started = time.perf_counter()
        try:
            results = self.engine.verify_batch([(r.session, p.trunk, p.branches, r.sampling, p.lookup)
                                                for r, p in zip(requests, plans)])
        except Exception as exc:  # the process survives; these requests fail loudly
            log.exception("verification failed for %s", [r.request_id for r in requests])
            for request in requests:
                self.end(request, Error(request_id=request.request_id, code=ErrorCode.INTERNAL, message=str(exc)))
            return
        widths, seconds = [r.num_nodes for r in results], time.perf_counter() - started
        self.speculation.observe_pass(widths, seconds, is_drafting=not is_solo_pass)
        for request, plan, result in zip(requests, plans, results):
            self.speculation.observe_lookup(request.request_id, request.committed_length - len(result.appended),
                                            _num_matching(plan.lookup, result.appended))
        lengths = self.scheduler.next_lengths(requests)
        log.debug("pass of %d rows x %d tokens (%d real): %.0f ms, %d committed; next drafts %s", len(requests),
                  max(widths), sum(widths), 1000 * seconds, sum(len(result.appended) for result in results), lengths)
        for request, plan, result, length in zip(requests, plans, results, lengths):
            request.stats.record(len(plan.trunk), result, plan.is_predraft, has_draft=plan.has_draft)
            self.stats.record_round(len(plan.trunk), result.num_trunk_accepted)
            if request.request_id in self.requests:  # not freed meanwhile (its client vanished)
                self.after_round(request, plan, result, length)
        self.stats.record_pass(seconds, self.link.is_absent)
        self.last_round_end = time.monotonic() if self.requests else None
        self.open_admitted()  # those admitted from the queue as others ended

    def observe_wait(self, requests: list[ServerRequest]) -> None:
        """How long the target stood idle before this pass, prefills excluded: the cost on the
        critical path of the drafts these requests were asked for (the longest of them)."""
        if self.last_round_end is not None and not self.link.is_absent:
            idle = time.monotonic() - self.last_round_end - self.prefill_s
            self.speculation.wait.observe(max(request.draft_length for request in requests), idle)
        self.prefill_s = 0.0

    def pick_threads(self) -> bool:
        """Threads for the next pass or prefill: the drafter's cores too while no request waits
        for a draft or it is absent (True then), or, taking turns, has nothing to draft."""
        is_drafter_idle = self.link.is_absent or self.scheduler.is_drafter_idle
        is_drafter_waiting = self.takes_turns and self.scheduler.holds_every_draft
        if self.threads is not None:
            self.engine.use_threads(self.solo_threads if is_drafter_idle or is_drafter_waiting else self.threads)
        return is_drafter_idle

    def after_round(self, request: ServerRequest, plan, result, draft_length: int) -> None:
        """Commit a verified round: finish, stream, end, or tell the drafter the verdict and how
        long its next draft should be."""
        request.waiting_since = time.monotonic()
        kept, reason = finish(request.new_tokens + result.appended, request.max_new_tokens, request.stop_token_ids)
        previous = len(request.new_tokens)
        request.new_tokens = kept
        self.stats.generation_tokens += len(kept) - previous
        if request.commit_text(kept[previous:], is_final=reason is not None):
            reason = FinishReason.STOP
        self.stream(request, request.new_tokens[previous:], is_final=reason is not None)
        if request.request_id not in self.requests:
            return  # the client vanished mid-stream: its session is already freed
        if reason is not None:
            seed = request.sampling.seed if request.sampling else None
            self.end(request, Done(request_id=request.request_id, finish_reason=reason, seed=seed,
                                   prompt_tokens=request.session.num_prompt, completion_tokens=len(request.new_tokens),
                                   metrics=self.metrics_of(request)))
            return
        request.draft_length = draft_length
        self.link.send(Verdict(request_id=request.request_id, committed_length=request.committed_length,
                                appended=result.appended, num_trunk_verified=len(plan.trunk),
                                num_trunk_accepted=result.num_trunk_accepted,
                                trunk_predictions=result.trunk_predictions,
                                branch_predictions=result.branch_predictions,
                                draft_length=draft_length))

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
        return request.stats.as_metrics(len(request.new_tokens)) | {"drafter_uptime_s": self.link.uptime_s()}

    def open_admitted(self) -> None:
        """Tell the drafter of the requests admitted since: only once a burst of arrivals is all
        prefilled, so each prefill runs while the drafter is idle, on its cores too (pick_threads)."""
        for request in list(self.requests.values()):
            if not request.is_on_drafter:
                self.open_on_drafter(request)

    def open_on_drafter(self, request: ServerRequest) -> None:
        self.link.gave_work()
        request.is_on_drafter = True
        request.draft_length = self.scheduler.next_lengths([request])[0]
        request.waiting_since = time.monotonic()  # its first draft is due from now
        self.link.send(Open(request_id=request.request_id, token_ids=list(request.session.tokens),
                             max_new_tokens=request.max_new_tokens - len(request.new_tokens),
                             draft_length=request.draft_length))

    def reply(self, identity: bytes, msg) -> bool:
        return self.client_link.send(identity, msg)


def _num_matching(guess, text) -> int:
    """Leading tokens of `guess` that `text` has too."""
    n = 0
    while n < min(len(guess), len(text)) and guess[n] == text[n]:
        n += 1
    return n
