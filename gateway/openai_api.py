"""OpenAI's request and response shapes, and nothing else: request bodies checked and turned into
the parameters of one Generate, replies built from our Chunks and Completions. No I/O here."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from protocol.client import Completion

MAX_STOP_STRINGS = 16
# Parameters that would change the target's distribution or ask for more than one choice: refused
# (HTTP 400) rather than silently ignored, since this server's output must equal the target's.
UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
               "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
               "frequency_penalty": (None, 0, 0.0), "suffix": (None, ""), "tools": (None, []),
               "response_format": (None, {"type": "text"})}


class BadRequest(ValueError):
    """A request OpenAI's API would answer with 400 (or `status`), naming the parameter."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.kind, self.code = param, status, kind, code


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class GenerateParams:
    """One request, in our terms (the ZeroMQ client's arguments)."""

    prompt: str | list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False

    def client_kwargs(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "seed": self.seed, "stop": self.stop}


def _number(body: dict, name: str, default: float, low: float, high: float, *, is_int: bool = False,
            low_open: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kind = int if is_int else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be {'an integer' if is_int else 'a number'}, got {value!r}", name)
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise BadRequest(f"'{name}' must be in {bounds}, got {value}", name)
    return value


def parse_common(body: Any, default_max_tokens: int) -> dict:
    """The sampling and length parameters both endpoints share, checked."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for name, allowed in UNSUPPORTED.items():
        if name in body and body[name] not in allowed:
            raise BadRequest(f"'{name}' is not supported by this server", name)
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    max_tokens = body.get("max_completion_tokens")
    max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", default_max_tokens, 1, 1_000_000, is_int=True)
    top_k = _number(body, "top_k", 0, -1, 1_000_000, is_int=True)  # vLLM's -1 and our 0 both mean off
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise BadRequest(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise BadRequest(f"'seed' must be a non-negative integer, got {seed!r}", "seed")
    return {"max_new_tokens": max_tokens, "temperature": float(_number(body, "temperature", 1.0, 0.0, 2.0)),
            "top_p": float(_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)), "top_k": max(top_k, 0),
            "seed": seed, "stop": stop, "stream": stream, "include_usage": bool(options.get("include_usage"))}


def parse_completion(body: Any) -> GenerateParams:
    """POST /v1/completions: `prompt` is a string, a list of token ids, or a list of one of either."""
    common = parse_common(body, default_max_tokens=16)  # OpenAI's default for completions
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    is_ids = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (isinstance(prompt, str) and prompt) and not is_ids:
        raise BadRequest("'prompt' must be a non-empty string or a list of token ids (one prompt per request)",
                         "prompt")
    return GenerateParams(prompt=prompt, **common)


def parse_chat(body: Any, apply_template) -> GenerateParams:
    """POST /v1/chat/completions: messages rendered by the tokenizer's own chat template."""
    common = parse_common(body, default_max_tokens=512)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    rendered = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise BadRequest(f"messages[{i}] needs a 'role' of system, user, assistant or developer", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        rendered.append({"role": role, "content": content})
    return GenerateParams(prompt=apply_template(rendered), **common)


def usage(completion: Completion) -> dict:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


class Replies:
    """Response objects for one request, in the shape of the endpoint it came to."""

    def __init__(self, request_id: str, model: str, is_chat: bool) -> None:
        self.id = ("chatcmpl-" if is_chat else "cmpl-") + request_id
        self.model, self.is_chat, self.created = model, is_chat, int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self, completion: Completion) -> dict:
        if self.is_chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                      "finish_reason": completion.finish_reason, "logprobs": None}
            return self._head("chat.completion") | {"choices": [choice], "usage": usage(completion)}
        choice = {"index": 0, "text": completion.text, "finish_reason": completion.finish_reason, "logprobs": None}
        return self._head("text_completion") | {"choices": [choice], "usage": usage(completion)}

    def chunk(self, text: str | None, finish_reason: str | None = None, is_first: bool = False) -> dict:
        """A streamed piece: a text delta, or (text None) the end with its finish reason."""
        if self.is_chat:
            delta = {} if text is None else {"content": text}
            if is_first:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return self._head("chat.completion.chunk") | {"choices": [choice]}
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return self._head("text_completion") | {"choices": [choice]}

    def usage_chunk(self, completion: Completion) -> dict:
        kind = "chat.completion.chunk" if self.is_chat else "text_completion"
        return self._head(kind) | {"choices": [], "usage": usage(completion)}
