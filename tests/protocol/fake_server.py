"""A real ROUTER server in a thread, scripted per test by a handler, for the client tests."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import zmq

from protocol.codec import decode, encode
from protocol.messages import Done, Error, Generate, Message, Tokens
from protocol.sockets import make_socket

Handler = Callable[[Generate], list[Message]]


class FakeServer:
    """Records every decoded request and answers each Generate with handler(msg)."""

    def __init__(self, endpoint: str, handler: Handler) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.address = ""
        self.received: queue.Queue[Message] = queue.Queue()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_loop, daemon=True)

    def start(self) -> FakeServer:
        self._thread.start()
        assert self._ready.wait(5), "fake server did not bind"
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait_for(self, kind: type, timeout: float = 3.0) -> Message:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = self.received.get(timeout=remaining)
            except queue.Empty:
                break
            if isinstance(msg, kind):
                return msg
        raise AssertionError(f"server saw no {kind.__name__} within {timeout}s")

    def _serve_loop(self) -> None:
        ctx = zmq.Context()
        sock = make_socket(ctx, zmq.ROUTER)
        if self.endpoint == "tcp":
            self.address = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
        else:
            sock.bind(self.endpoint)
            self.address = self.endpoint
        self._ready.set()
        while not self._stop.is_set():
            if not sock.poll(20):
                continue
            identity, frame = sock.recv_multipart()
            msg = decode(frame)
            self.received.put(msg)
            if isinstance(msg, Generate):
                for reply in self.handler(msg):
                    sock.send_multipart([identity, encode(reply)])
        sock.close()
        ctx.term()


def replies_abc(msg: Generate) -> list[Message]:
    """A stale reply, then two chunks and Done."""
    rid = msg.request_id
    return [
        Tokens(request_id="stale", token_ids=[99], text="zz"),
        Tokens(request_id=rid, token_ids=[10, 11], text="ab"),
        Tokens(request_id=rid, token_ids=[12], text="c"),
        Done(request_id=rid, finish_reason="length", prompt_tokens=len(msg.prompt_ids) or len(msg.prompt),
             completion_tokens=3, seed=msg.seed, metrics={"acceptance_rate": 0.5}),
    ]


def replies_error(msg: Generate) -> list[Message]:
    return [Error(request_id=msg.request_id, code="invalid_request", message="prompt too long")]


def replies_then_silence(msg: Generate) -> list[Message]:
    return [Tokens(request_id=msg.request_id, token_ids=[i], text=str(i)) for i in range(3)]
