"""Semantic checks of a Generate request against the serving model (the codec checks only types)."""
from __future__ import annotations

import math

from protocol.errors import ProtocolError
from protocol.messages import Generate

MAX_NEW_TOKENS_LIMIT = 1_000_000


def validate_generate(msg: Generate, vocab_size: int, max_context: int) -> None:
    """Raise ProtocolError (carrying msg.request_id) naming the first invalid field of `msg`."""
    problem = _first_problem(msg, vocab_size, max_context)
    if problem is not None:
        raise ProtocolError(f"Generate.{problem}", request_id=msg.request_id)


def _first_problem(msg: Generate, vocab_size: int, max_context: int) -> str | None:
    if not msg.prompt and not msg.prompt_ids:
        return "prompt: empty prompt (give prompt or prompt_ids)"
    if msg.prompt and msg.prompt_ids:
        return "prompt: give prompt or prompt_ids, not both"
    if not 1 <= msg.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        return f"max_new_tokens: {msg.max_new_tokens} not in [1, {MAX_NEW_TOKENS_LIMIT}]"
    if not math.isfinite(msg.temperature) or msg.temperature < 0:
        return f"temperature: {msg.temperature} must be finite and >= 0"
    if not (math.isfinite(msg.top_p) and 0 < msg.top_p <= 1):
        return f"top_p: {msg.top_p} not in (0, 1]"
    if msg.top_k < 0:
        return f"top_k: {msg.top_k} must be >= 0 (0 disables top-k)"
    if len(msg.prompt_ids) > max_context:
        return f"prompt_ids: {len(msg.prompt_ids)} tokens > max context {max_context}"
    for name in ("prompt_ids", "stop_token_ids"):
        for i, token in enumerate(getattr(msg, name)):
            if not 0 <= token < vocab_size:
                return f"{name}[{i}]: token id {token} not in [0, vocab_size={vocab_size})"
    return None
