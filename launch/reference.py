"""The target alone: HF greedy generate, and the keyed sampler that sampling is checked against."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from verifier.sampling import SamplingParams, next_tokens
from verifier.stopping import finish


@torch.inference_mode()
def target_alone(
    model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int, stop_token_ids: Sequence[int] = (),
    sampling: SamplingParams | None = None,
) -> list[int]:
    """Plain decoding, one token per forward pass. Greedy uses HF `generate`; sampling draws
    the token at absolute index t with the uniform keyed by (seed, t), as the pipeline does."""
    device = next(model.parameters()).device
    if sampling is None or sampling.is_greedy:
        out = model.generate(
            torch.tensor([list(prompt_ids)], device=device), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=list(stop_token_ids) or None, pad_token_id=0,
            **({} if stop_token_ids else {"min_new_tokens": max_new_tokens}),
        )
        return finish(out[0, len(prompt_ids) :].tolist(), 0, max_new_tokens, set(stop_token_ids))[0]
    tokens, new = list(prompt_ids), []
    cache = DynamicCache(config=model.config)
    feed = tokens
    while True:
        logits = model(input_ids=torch.tensor([feed], device=device), cache=cache, use_cache=True,
                       logits_to_keep=1).logits[0]
        token = next_tokens(logits, [len(tokens)], sampling)[0]
        tokens.append(token)
        kept, reason = finish([token], len(new), max_new_tokens, set(stop_token_ids))
        new += kept
        if reason is not None:
            return new
        feed = [token]
