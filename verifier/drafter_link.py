"""The verifier's side of the link to its drafter: the socket, who the live drafter is, and its
liveness (silent past --draft-timeout while a request waits = absent, decode alone). No tensors."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import zmq

from protocol.codec import encode
from protocol.messages import Draft
from protocol.sockets import make_socket, recv_routed

log = logging.getLogger("ouroboros.verifier")


class DrafterLink:
    def __init__(self, ctx: zmq.Context, draft_timeout_s: float) -> None:
        self.socket = make_socket(ctx, zmq.ROUTER, hwm=10_000)
        self.draft_timeout_s = draft_timeout_s
        self.identity: bytes | None = None  # ROUTER identity of the live drafter
        self.seen = 0.0  # last sign of life (a draft), or the latest work given
        self.since = 0.0  # when the live drafter's handshake was done
        self.is_absent = True
        self.max_sessions = 0  # requests the live drafter keeps at once (its Hello): no more are opened there

    def accept(self, identity: bytes) -> bool:
        """A drafter's handshake; True when it is a new one (its requests need a re-sync)."""
        is_new = identity != self.identity
        self.identity, self.seen, self.is_absent = identity, time.monotonic(), False
        if is_new:
            self.since = time.monotonic()
        return is_new

    def heard(self) -> None:
        self.seen, self.is_absent = time.monotonic(), False

    def gave_work(self) -> None:
        """Its silence counts from the latest work given."""
        self.seen = time.monotonic()

    def check_silence(self, waiting_since: Iterable[float]) -> None:
        """A drafter silent past --draft-timeout while a request waits: decode alone until it
        speaks. Checked after draining, so drafts queued during a long pass count as speech."""
        now = time.monotonic()
        if self.identity is None or self.is_absent or now - self.seen <= self.draft_timeout_s:
            return
        if any(now - since > self.draft_timeout_s for since in waiting_since):
            self.is_absent = True
            log.warning("no draft within %.1f s (--draft-timeout): decoding with the target alone",
                        self.draft_timeout_s)

    def uptime_s(self) -> float:
        """Seconds since the live drafter's handshake, -1 when none is live."""
        return time.monotonic() - self.since if self.identity is not None and not self.is_absent else -1.0

    def receive(self) -> tuple[bytes, bytes]:
        return recv_routed(self.socket)

    def send(self, msg, identity: bytes | None = None) -> None:
        """To the live drafter, or to the peer `identity` (a refusal). Never blocks."""
        identity = identity or self.identity
        if identity is None:
            return
        try:
            self.socket.send_multipart([identity, encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send %s to the drafter: %s", type(msg).__name__, exc)


def is_within_vocab(msg: Draft, vocab_size: int) -> bool:
    """A draft holding ids past the target's vocabulary is dropped (logged), never verified."""
    tokens = [*msg.trunk, *(t for branch in msg.branches for t in branch)]
    if tokens and max(tokens) >= vocab_size:
        log.warning("dropped a draft for %s holding token ids past the target's %d", msg.request_id, vocab_size)
        return False
    return True
