"""Client library, blocking: Client and Stream, plus the reply types shared with AsyncClient."""
# A request is one Generate frame; the server answers with Tokens frames and ends with Done or
# Error. `timeout` is the longest silence allowed between two replies of a request; longer
# raises ServerTimeout. Replies naming another request_id are stale and ignored. A stream left
# before Done (break, close, exception) sends Cancel.
from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import zmq

from protocol.codec import decode, encode
from protocol.errors import ClientClosed, ProtocolError, ServerError, ServerTimeout
from protocol.messages import Cancel, Done, Error, Generate, Message, Status, StatusQuery, Tokens
from protocol.curve import secure_client
from protocol.sockets import make_socket

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    token_ids: list[int]
    text: str


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seed: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class GenerateParams(TypedDict, total=False):
    """What a request may set besides its prompt; each default is make_generate's."""

    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_k: int  # 0 = off
    top_p: float  # 1 = off
    seed: int | None  # sampling is reproducible with a seed
    stop: Sequence[str]  # the text ends before the first one
    stop_token_ids: Sequence[int]  # the text ends after the first one


def make_generate(prompt: str | Sequence[int], *, is_stream: bool, max_new_tokens: int = 128,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  seed: int | None = None, stop: Sequence[str] = (),
                  stop_token_ids: Sequence[int] = ()) -> Generate:
    """A Generate with a fresh uuid4 request_id; a str prompt is text, a sequence is token ids."""
    is_text = isinstance(prompt, str)
    return Generate(
        request_id=uuid.uuid4().hex,
        prompt=prompt if is_text else "",
        prompt_ids=[] if is_text else [int(t) for t in prompt],
        max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
        top_p=float(top_p), seed=seed, stop=list(stop),
        stop_token_ids=[int(t) for t in stop_token_ids], stream=is_stream,
    )


class Accumulator:
    """Folds the replies of one request into Chunks and, on Done, a Completion."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.token_ids: list[int] = []
        self.texts: list[str] = []
        self.completion: Completion | None = None
        self.is_finished = False  # Done or Error seen: the server holds nothing to cancel

    def add(self, msg: Message) -> Chunk | None:
        """Chunk for Tokens, None for Done (completion set); raises ServerError for Error."""
        if isinstance(msg, Tokens):
            self.token_ids.extend(msg.token_ids)
            self.texts.append(msg.text)
            return Chunk(token_ids=msg.token_ids, text=msg.text)
        self.is_finished = True
        if isinstance(msg, Error):
            raise ServerError(msg.code, msg.message)
        if isinstance(msg, Done):
            self.completion = Completion(
                request_id=msg.request_id, text="".join(self.texts), token_ids=self.token_ids,
                finish_reason=msg.finish_reason, prompt_tokens=msg.prompt_tokens,
                completion_tokens=msg.completion_tokens, seed=msg.seed, metrics=msg.metrics,
            )
            return None
        raise ProtocolError(f"unexpected {type(msg).__name__} reply", request_id=self.request_id)


def status_of(msg: Message, request_id: str) -> Status:
    """The reply to a StatusQuery: Status, or the server's Error raised."""
    if isinstance(msg, Status):
        return msg
    if isinstance(msg, Error):
        raise ServerError(msg.code, msg.message)
    raise ProtocolError(f"unexpected {type(msg).__name__} reply to a status query", request_id=request_id)


def timeout_error(address: str, timeout: float) -> ServerTimeout:
    return ServerTimeout(
        f"no reply from {address} within timeout={timeout}s: is the server running there? "
        "(raise the client's `timeout` argument for slow models)"
    )


class StreamResult:
    """Where a stream's generator leaves the Completion (kept apart to avoid a ref cycle)."""

    completion: Completion | None = None


class Stream:
    """Iterator of Chunks for one request. `completion` is set once Done arrives.

    close() (or leaving a `with` block, or dropping the stream) before Done sends Cancel.
    """

    def __init__(self, chunks: Iterator[Chunk], result: StreamResult) -> None:
        self._chunks = chunks
        self._result = result

    @property
    def completion(self) -> Completion | None:
        return self._result.completion

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Client:
    """Blocking client, one request at a time; not thread-safe (use one Client per thread)."""

    def __init__(self, address: str, timeout: float = 60.0, *, context: zmq.Context | None = None,
                 curve_keys: str | None = None) -> None:
        """curve_keys: a directory made by `ouroboros keys`, for a server run with --curve-keys."""
        self.address = address
        self.timeout = timeout
        self._owns_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._socket = make_socket(self._ctx, zmq.DEALER, send_timeout_ms=math.ceil(timeout * 1000))
        if curve_keys is not None:
            secure_client(self._socket, curve_keys)
        self._socket.connect(address)
        self._active_request_id: str | None = None
        self.is_closed = False

    def generate(self, prompt: str | Sequence[int], **params: Unpack[GenerateParams]) -> Completion:
        """Run one request to completion; a str prompt is text, a sequence of ints is token ids;
        `params` as GenerateParams (defaults: make_generate's)."""
        request = make_generate(prompt, is_stream=False, **params)
        result = StreamResult()
        for _ in self._run(request, result):
            pass
        return result.completion

    def stream(self, prompt: str | Sequence[int], **params: Unpack[GenerateParams]) -> Stream:
        """Start one streamed request; it is sent on the first iteration of the Stream."""
        self._check_open()
        request = make_generate(prompt, is_stream=True, **params)
        result = StreamResult()
        return Stream(self._run(request, result), result)

    def status(self) -> Status:
        """The verifier's state: requests running and queued, the drafter's presence, and its
        speculative counters since it started."""
        self._check_open()
        if self._active_request_id is not None:
            raise RuntimeError("Client runs one request at a time: finish or close the open stream first")
        query = StatusQuery(request_id=uuid.uuid4().hex)
        self._send(query)
        return status_of(self._recv_for(query.request_id), query.request_id)

    def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self._socket.close(linger=0)
        if self._owns_context:
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, request: Generate, result: StreamResult) -> Iterator[Chunk]:
        self._check_open()
        if self._active_request_id is not None:
            raise RuntimeError("Client runs one request at a time: finish or close the open stream, "
                               "or use AsyncClient for concurrent requests")
        self._active_request_id = request.request_id
        accumulator = Accumulator(request.request_id)
        try:
            self._send(request)
            while accumulator.completion is None:
                chunk = accumulator.add(self._recv_for(request.request_id))
                if chunk is not None:
                    yield chunk
            result.completion = accumulator.completion
        finally:
            self._active_request_id = None
            if not accumulator.is_finished and not self.is_closed:
                self._cancel(request.request_id)

    def _send(self, msg: Message) -> None:
        try:
            self._socket.send(encode(msg))
        except zmq.Again:
            raise timeout_error(self.address, self.timeout) from None

    def _recv_for(self, request_id: str) -> Message:
        deadline = time.monotonic() + self.timeout
        while True:
            self._check_open()
            remaining_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms, zmq.POLLIN):
                raise timeout_error(self.address, self.timeout)
            msg = decode(self._socket.recv())
            if getattr(msg, "request_id", None) == request_id:
                return msg
            log.debug("ignoring stale %s for another request", type(msg).__name__)

    def _cancel(self, request_id: str) -> None:
        try:
            self._socket.send(encode(Cancel(request_id=request_id)), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("could not send Cancel for %s: %s", request_id, exc)

    def _check_open(self) -> None:
        if self.is_closed:
            raise ClientClosed(f"Client for {self.address} is closed")
