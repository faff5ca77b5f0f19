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
    problem = sampling_problem(msg.temperature, msg.top_p, msg.top_k)
    if problem is not None:
        return problem
    if msg.prompt_ids:  # a text prompt is checked once tokenized (TargetEngine.check_prompt)
        problem = prompt_problem(msg.prompt_ids, 0, vocab_size, max_context)
        if problem is not None:
            return f"prompt_ids: {problem}"
    for i, token in enumerate(msg.stop_token_ids):
        if not 0 <= token < vocab_size:
            return f"stop_token_ids[{i}]: token id {token} not in [0, vocab_size={vocab_size})"
    return None


def sampling_problem(temperature: float, top_p: float, top_k: int) -> str | None:
    """The one statement of what sampling parameters may be, for the wire (validate_generate)
    and for verifier.sampling.SamplingParams alike: the first bad one, named, or None."""
    if not math.isfinite(temperature) or temperature < 0:
        return f"temperature: {temperature} must be finite and >= 0 (0 = greedy)"
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        return f"top_p: {top_p} not in (0, 1]"
    if top_k < 0:
        return f"top_k: {top_k} must be >= 0 (0 disables top-k)"
    return None


def prompt_problem(tokens, max_new_tokens: int, vocab_size: int, max_context: int) -> str | None:
    """The one statement of what a prompt may be: not empty, within the context with the
    tokens to come, every id one the target has. The first problem, or None."""
    if not tokens:
        return "the prompt is empty: give at least one token"
    if len(tokens) + max_new_tokens > max_context:
        more = f" plus max_new_tokens ({max_new_tokens})" if max_new_tokens else ""
        return (f"the prompt ({len(tokens)} tokens){more} is over the max context of {max_context} tokens (the "
                "model's context, or --max-len): shorten the prompt" + (" or lower max_new_tokens" if more else ""))
    for i, token in enumerate(tokens):
        if not 0 <= token < vocab_size:
            return f"token id {token} at [{i}] is outside the target vocabulary (vocab_size={vocab_size})"
    return None
