"""Client library, asyncio: AsyncClient and AsyncStream (same semantics as Client)."""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Unpack

import zmq
import zmq.asyncio

from protocol.client import (Accumulator, Chunk, Completion, GenerateParams, StreamResult, make_generate, status_of,
                             timeout_error)
from protocol.codec import decode, encode
from protocol.errors import ClientClosed, ProtocolError
from protocol.messages import Cancel, Generate, Message, Status, StatusQuery
from protocol.curve import secure_client
from protocol.sockets import make_socket

log = logging.getLogger(__name__)


class AsyncStream:
    """Async iterator of Chunks for one request. `completion` is set once Done arrives.

    aclose() (or leaving an `async with` block, or dropping the stream) before Done sends Cancel.
    """

    def __init__(self, chunks: AsyncIterator[Chunk], result: StreamResult) -> None:
        self._chunks = chunks
        self._result = result

    @property
    def completion(self) -> Completion | None:
        return self._result.completion

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Chunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncClient:
    """asyncio client; concurrent requests share one socket and a reader task routes replies.

    Use it from one event loop only (the one that first sends a request).
    """

    def __init__(self, address: str, timeout: float = 60.0, *,
                 context: zmq.asyncio.Context | None = None, curve_keys: str | None = None) -> None:
        """curve_keys: a directory made by `ouroboros keys`, for a server run with --curve-keys."""
        self.address = address
        self.timeout = timeout
        self._owns_context = context is None
        self._ctx = zmq.asyncio.Context() if context is None else context
        self._socket = make_socket(self._ctx, zmq.DEALER)
        if curve_keys is not None:
            secure_client(self._socket, curve_keys)
        self._socket.connect(address)
        # One queue per open request. Unbounded, but a request gets at most
        # max_new_tokens + 1 replies, and the queue is dropped when the request ends.
        self._queues: dict[str, asyncio.Queue[Message | Exception]] = {}
        self._reader: asyncio.Task | None = None
        self.is_closed = False

    async def generate(self, prompt: str | Sequence[int], **params: Unpack[GenerateParams]) -> Completion:
        """Run one request to completion; a str prompt is text, a sequence of ints is token ids;
        `params` as GenerateParams (defaults: make_generate's)."""
        request = make_generate(prompt, is_stream=False, **params)
        result = StreamResult()
        async for _ in self._run(request, result):
            pass
        return result.completion

    def stream(self, prompt: str | Sequence[int], **params: Unpack[GenerateParams]) -> AsyncStream:
        """Start one streamed request; it is sent on the first iteration of the AsyncStream."""
        self._check_open()
        request = make_generate(prompt, is_stream=True, **params)
        result = StreamResult()
        return AsyncStream(self._run(request, result), result)

    async def status(self) -> Status:
        """The verifier's state and counters (see Client.status)."""
        self._check_open()
        query = StatusQuery(request_id=uuid.uuid4().hex)
        queue: asyncio.Queue[Message | Exception] = asyncio.Queue()
        self._queues[query.request_id] = queue
        self._start_reader()
        try:
            await self._send(query)
            return status_of(await self._next_reply(queue), query.request_id)
        finally:
            del self._queues[query.request_id]

    def close(self) -> None:
        """Stop the reader, close the socket, and fail open requests with ClientClosed."""
        if self.is_closed:
            return
        self.is_closed = True
        if self._reader is not None:
            self._reader.cancel()
        self._wake_all(ClientClosed(f"AsyncClient for {self.address} was closed"))
        self._socket.close(linger=0)
        if self._owns_context:
            self._ctx.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def _run(self, request: Generate, result: StreamResult) -> AsyncIterator[Chunk]:
        self._check_open()
        queue: asyncio.Queue[Message | Exception] = asyncio.Queue()
        self._queues[request.request_id] = queue
        self._start_reader()
        accumulator = Accumulator(request.request_id)
        try:
            await self._send(request)
            while accumulator.completion is None:
                chunk = accumulator.add(await self._next_reply(queue))
                if chunk is not None:
                    yield chunk
            result.completion = accumulator.completion
        finally:
            del self._queues[request.request_id]
            if not accumulator.is_finished and not self.is_closed:
                await self._cancel(request.request_id)

    async def _send(self, msg: Message) -> None:
        try:
            await asyncio.wait_for(self._socket.send(encode(msg)), self.timeout)
        except TimeoutError:
            raise timeout_error(self.address, self.timeout) from None

    async def _next_reply(self, queue: asyncio.Queue[Message | Exception]) -> Message:
        self._check_open()  # replies queued before close() are not delivered after it
        try:
            item = await asyncio.wait_for(queue.get(), self.timeout)
        except TimeoutError:
            raise timeout_error(self.address, self.timeout) from None
        if isinstance(item, Exception):
            raise item
        return item

    async def _cancel(self, request_id: str) -> None:
        try:
            await self._socket.send(encode(Cancel(request_id=request_id)), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("could not send Cancel for %s: %s", request_id, exc)

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        """Route each reply to the queue of its request; stale replies are dropped."""
        while True:
            try:
                frame = await self._socket.recv()
            except zmq.ZMQError as exc:
                self._wake_all(exc)
                return
            try:
                msg = decode(frame)
                request_id = getattr(msg, "request_id", None)
            except ProtocolError as exc:
                msg, request_id = exc, exc.request_id
            queue = self._queues.get(request_id)
            if queue is None:
                log.log(logging.WARNING if isinstance(msg, Exception) else logging.DEBUG,
                        "dropping reply for unknown or finished request %s: %s", request_id, msg)
                continue
            queue.put_nowait(msg)

    def _wake_all(self, exc: Exception) -> None:
        for queue in self._queues.values():
            queue.put_nowait(exc)

    def _check_open(self) -> None:
        if self.is_closed:
            raise ClientClosed(f"AsyncClient for {self.address} is closed")
