"""The OpenAI-compatible HTTP door: an ASGI app (Starlette) in front of the verifier's client
socket. It speaks HTTP and JSON and holds an AsyncClient; it never sees a tensor."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid

import zmq
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.metrics import DoorMetrics, RequestTimer
from gateway.openai_api import BadRequest, GenerateParams, Replies, error_body, parse_chat, parse_completion
from protocol.async_client import AsyncClient
from protocol.errors import OuroborosError, ProtocolError, ServerError, ServerTimeout
from protocol.messages import ErrorCode

log = logging.getLogger("ouroboros.http")
STATUS_TIMEOUT_S = 5.0
RETRY_AFTER_S = "1"
DISCONNECT_POLL_S = 0.25


def _error(exc: BadRequest) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if exc.status in (429, 503) else None
    return JSONResponse(error_body(str(exc), exc.kind, exc.param, exc.code), status_code=exc.status, headers=headers)


# what talking to the verifier may raise: its Error replies and silence, a malformed reply, the socket
DOOR_ERRORS = (OuroborosError, ProtocolError, zmq.ZMQError)


def _from_server(exc: Exception) -> BadRequest:
    """Our errors in OpenAI's terms: bad input 400, busy 503 (retry), silence 504, else 500."""
    if isinstance(exc, ServerError) and exc.code == ErrorCode.INVALID_REQUEST:
        return BadRequest(exc.message)
    if isinstance(exc, ServerError) and exc.code == ErrorCode.OVERLOADED:
        return BadRequest(exc.message, status=503, kind="server_error", code="overloaded")
    if isinstance(exc, ServerTimeout):
        return BadRequest(str(exc), status=504, kind="server_error", code="timeout")
    return BadRequest(str(exc), status=500, kind="server_error")


async def _unless_disconnected(request: Request, work):
    """Await `work`, or cancel it and return None once the HTTP client has gone (the
    AsyncClient then sends Cancel to the verifier as the request unwinds)."""
    task = asyncio.ensure_future(work)
    try:
        while not (await asyncio.wait({task}, timeout=DISCONNECT_POLL_S))[0]:
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # unwound: its Cancel has gone out
                return None
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class HttpDoor:
    """State of the door: the served model's name, its tokenizer (chat template), the verifier's
    endpoint once the pipeline is ready, and the metrics."""

    def __init__(self, model_name: str, tokenizer, *, api_key: str | None = None, timeout_s: float = 600.0,
                 curve_keys: str | None = None) -> None:
        self.model_name, self.tokenizer, self.api_key = model_name, tokenizer, api_key
        self.timeout_s, self.curve_keys = timeout_s, curve_keys
        self.endpoint: str | None = None  # set (from any thread) once the pipeline is ready
        self.metrics = DoorMetrics()
        self._client: AsyncClient | None = None
        self.app = Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ], lifespan=self.lifespan)

    def client(self) -> AsyncClient:
        if self.endpoint is None:
            raise BadRequest("the pipeline is starting; retry shortly", status=503, kind="server_error",
                             code="starting")
        if self._client is None:  # made in the server's event loop, the one that uses it
            self._client = AsyncClient(self.endpoint, timeout=self.timeout_s, curve_keys=self.curve_keys)
        return self._client

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        yield
        if self._client is not None:
            self._client.close()

    def check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise BadRequest("invalid or missing API key (Authorization: Bearer KEY)", status=401,
                             kind="invalid_request_error", code="invalid_api_key")

    def apply_template(self, messages: list[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRequest(f"model {self.model_name} has no chat template: use /v1/completions", "messages")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # ---- plain endpoints ----
    async def health(self, request: Request) -> Response:
        """503 until the pipeline is first ready; then 200 naming the drafter's state."""
        if self.endpoint is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            status = await asyncio.wait_for(self.client().status(), STATUS_TIMEOUT_S)
        except (*DOOR_ERRORS, TimeoutError) as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc) or type(exc).__name__}, status_code=503)
        self.metrics.status.update(status)
        drafter = "present" if status.is_drafter_present else "absent"
        return JSONResponse({"status": "ok", "drafter": drafter,
                             "decoding": "speculative" if status.is_drafter_present else "target alone",
                             "running": status.running, "queued": status.queued})

    async def prometheus(self, request: Request) -> Response:
        if self.endpoint is not None:
            try:
                self.metrics.status.update(await asyncio.wait_for(self.client().status(), STATUS_TIMEOUT_S))
            except (*DOOR_ERRORS, TimeoutError) as exc:
                log.warning("metrics without the verifier's counters: %s", exc)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        try:
            self.check_auth(request)
        except BadRequest as exc:
            return _error(exc)
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "ouroboros"}
        return JSONResponse({"object": "list", "data": [model]})

    # ---- generation ----
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, is_chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, is_chat=True)

    async def _generate(self, request: Request, is_chat: bool) -> Response:
        try:
            self.check_auth(request)
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BadRequest("the request body is not valid JSON") from None
            params = parse_chat(body, self.apply_template) if is_chat else parse_completion(body)
            if body.get("model") not in (None, self.model_name):
                raise BadRequest(f"the model {body.get('model')!r} does not exist; this server has "
                                 f"{self.model_name!r}", "model", status=404, code="model_not_found")
            replies = Replies(uuid.uuid4().hex, self.model_name, is_chat)
            if params.stream:
                return await self._stream(request, params, replies)
            return await self._whole(request, params, replies)
        except (BadRequest, *DOOR_ERRORS) as exc:
            error = exc if isinstance(exc, BadRequest) else _from_server(exc)
            self.metrics.failed.labels(status=str(error.status)).inc()
            return _error(error)

    async def _whole(self, request: Request, params: GenerateParams, replies: Replies) -> Response:
        """One JSON answer, gathered from a stream (so the silence timeout counts between rounds,
        not over the whole request); a client that disconnects first cancels its request."""
        timer = RequestTimer(self.metrics)
        stream = self.client().stream(params.prompt, **params.client_kwargs())

        async def gather():
            async for chunk in stream:
                timer.tokens(len(chunk.token_ids))
            return stream.completion

        try:
            completion = await _unless_disconnected(request, gather())
        except DOOR_ERRORS as exc:
            raise _from_server(exc) from None
        finally:
            await stream.aclose()
        if completion is None:
            return Response(status_code=499)
        timer.finished(completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
        return JSONResponse(replies.whole(completion))

    async def _stream(self, request: Request, params: GenerateParams, replies: Replies) -> Response:
        """Server-sent events. The first reply is awaited before answering, so a refused request
        gets its own status code; after that, errors come as an error event."""
        timer = RequestTimer(self.metrics)
        stream = self.client().stream(params.prompt, **params.client_kwargs())

        async def first_chunk():
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None

        try:
            first = await _unless_disconnected(request, first_chunk())
        except DOOR_ERRORS as exc:
            await stream.aclose()
            raise _from_server(exc) from None
        if first is None and stream.completion is None:  # the client left before the first token
            await stream.aclose()
            return Response(status_code=499)

        async def events():
            try:
                yield _sse(replies.chunk("" if first is None else first.text, is_first=True))
                if first is not None:
                    timer.tokens(len(first.token_ids))
                async for chunk in stream:
                    timer.tokens(len(chunk.token_ids))
                    if chunk.text:
                        yield _sse(replies.chunk(chunk.text))
                completion = stream.completion
                timer.finished(completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
                yield _sse(replies.chunk(None, completion.finish_reason))
                if params.include_usage:
                    yield _sse(replies.usage_chunk(completion))
                yield _sse("[DONE]")
            except Exception as exc:  # noqa: BLE001 - any failure ends the stream with an error event
                error = _from_server(exc)
                self.metrics.failed.labels(status=str(error.status)).inc()
                yield _sse(error_body(str(error), error.kind, error.param, error.code))
            finally:  # a client gone mid-stream lands here too: Cancel goes to the verifier
                await stream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def serve_in_thread(door: HttpDoor, host: str, port: int):
    """Run uvicorn for `door` in a daemon thread (signals stay with the main thread). Returns
    (server, thread, bound port) once it listens."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(door.app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="http-door")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"the HTTP door did not start on {host}:{port}")
    return server, thread, sock.getsockname()[1]
