"""The verifier's receiving side: messages from clients (admission, cancel, status) and from
the drafter (hello, resync, agreement, drafts). A mixin of VerifierServer (verifier.server),
which owns the sockets, the scheduler and the engine; no tensors."""
from __future__ import annotations

import logging
import secrets
import time
from collections import deque

import zmq

from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import (
    Agreement, Cancel, Done, Draft, Error, ErrorCode, FinishReason, Generate, Hello, HelloAck, Resync, StatusQuery,
)
from protocol.validation import validate_generate
from verifier.detokenize import IncrementalText
from verifier.drafter_link import is_within_vocab
from verifier.requests import ServerRequest
from verifier.sampling import SamplingParams

log = logging.getLogger("ouroboros.verifier")


class Receiving:
    def receive(self, wait_ms: int) -> None:
        """Take what both sockets hold (waiting up to `wait_ms` for the first message), then
        whether a waited-for drafter has fallen silent."""
        events = dict(self.poller.poll(wait_ms))
        if self.clients in events:
            self.drain_clients()
            self.open_admitted()
        if self.link.socket in events:
            self.drain_drafter()
        self.link.check_silence(r.waiting_since for r in self.requests.values())

    def drain_clients(self, limit: int = 256) -> None:
        for identity, msg in _messages(self.client_link.receive, limit):
            if isinstance(msg, ProtocolError):
                self.reply(identity, Error(request_id="", code=ErrorCode.PROTOCOL, message=str(msg)))
            elif isinstance(msg, Generate):
                self.handle_generate(identity, msg)
            elif isinstance(msg, Cancel):
                self.handle_cancel(identity, msg)
            elif isinstance(msg, StatusQuery):
                self.reply(identity, self.status(msg.request_id))
            else:
                self.reply(identity, Error(request_id=getattr(msg, "request_id", ""), code=ErrorCode.PROTOCOL,
                                           message=f"a client may not send {type(msg).__name__}"))

    def drain_drafter(self, limit: int = 256) -> None:
        for identity, msg in _messages(self.link.receive, limit):
            if isinstance(msg, ProtocolError):
                log.warning("dropped a malformed message on the drafter link: %s", msg)
                if "protocol version" in str(msg):  # an old or new peer: say so, in our version
                    self.link.send(Error(request_id="", code=ErrorCode.REFUSED, message=str(msg)), identity)
            elif isinstance(msg, Hello):
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
            self.link.max_sessions = max(msg.max_sessions, 0)
            log.info("drafter %s connected (room for %d requests); re-syncing %d requests", msg.drafter_id,
                     self.link.max_sessions, len(self.requests))
            for request in self.requests.values():
                request.drafts.clear()
                request.is_on_drafter, request.draft_length = False, 0
            self.open_admitted()

    def handle_resync(self, msg: Resync) -> None:
        """The drafter lost step with a request: re-open it there from the committed tokens."""
        request = self.requests.get(msg.request_id)
        if request is not None and request.is_on_drafter:
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
                                   prompt_tokens=request.session.num_prompt, completion_tokens=request.num_output,
                                   metrics=self.metrics_of(request)))


def _messages(receive, limit: int):
    """Up to `limit` (identity, message) pairs from a socket's receive, until it has none: a frame
    that does not decode comes as its ProtocolError, one that is not identity + frame is dropped."""
    for _ in range(limit):
        try:
            identity, frame = receive()
        except zmq.Again:
            return
        except ValueError:
            continue  # not an identity + one frame
        try:
            yield identity, decode(frame)
        except ProtocolError as exc:
            yield identity, exc
