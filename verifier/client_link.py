"""The verifier's side of its clients' socket: one ROUTER, replies that never block, and why the
latest one failed (the client is gone, or its queue is full). No tensors."""
from __future__ import annotations

import logging

import zmq

from protocol.codec import encode
from protocol.sockets import make_socket, recv_routed

log = logging.getLogger("ouroboros.verifier")


class ClientLink:
    def __init__(self, ctx: zmq.Context) -> None:
        self.socket = make_socket(ctx, zmq.ROUTER, hwm=10_000)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished client raises: we notice
        self.last_send_error = 0  # errno of the latest failed send

    def send(self, identity: bytes, msg) -> bool:
        """False when the client is gone (unroutable: EHOSTUNREACH) or its queue is full
        (EAGAIN); last_send_error says which."""
        try:
            self.socket.send_multipart([identity, encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            self.last_send_error = exc.errno
            log.warning("could not send %s to a client: %s", type(msg).__name__, exc)
            return False

    def is_gone(self) -> bool:
        return self.last_send_error == zmq.EHOSTUNREACH

    def receive(self) -> tuple[bytes, bytes]:
        return recv_routed(self.socket)
