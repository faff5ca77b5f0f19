"""Grouped-query attention on the CPU without copying the keys and values.

HF's sdpa attention repeats every key/value head for its group of query heads (repeat_kv)
whenever a pass has a mask and more than one query: a copy of the rows' whole cache, in every
layer of every verification pass. torch's SDPA takes the groups itself (enable_gqa) with the
same result; on this CPU a layer of 8 rows x 6 tokens over 156 keys (SmolLM2: 9 query heads, 3
key/value heads) took 195 us that way against 479 us with the copy, and 1 row x 16 tokens 56
against 92 us. The model's own modules and masks stay; only the attention function is swapped
(HF's AttentionInterface), and only where the model used sdpa.

A float32 or bfloat16 model takes our batch-invariant attention kernel instead
(kvcache/cpu_attention.cpp, AVX-512): each query's output is bit for bit the same whatever other
queries, rows or padding share the pass, so a verification pass and one-token decoding agree
exactly. It reads the cache in place (a batch's scattered slots too, kvcache.slots.in_place_rows),
sums in float32 and rounds each output once. On this repo's 2-core CPU it is faster than SDPA
(one thread, the built-in target: a 1-token pass's attention 1.2 -> 0.6 ms in float32, an 8-row
decode pass's attention and cache reads 6.7 -> 3.7 ms). Calls it does not cover (float masks
only; no attention sinks, no dropout) go to sdpa, said once in the log."""
from __future__ import annotations

import ctypes
import logging

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from kvcache import cpu_gemm
from kvcache.slots import IN_PLACE_ATTENTION, in_place_rows

log = logging.getLogger(__name__)

NAME = "ouroboros_cpu_sdpa"
EXACT_NAME = IN_PLACE_ATTENTION
_said: set[str] = set()


def sdpa_without_copies(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """HF's sdpa_attention_forward, but a masked pass of several queries leaves the grouping of
    heads to SDPA (enable_gqa) instead of copying keys and values per query head."""
    is_grouped = getattr(module, "num_key_value_groups", 1) > 1
    if (is_grouped and attention_mask is not None and query.shape[2] > 1 and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None and not kwargs.get("output_attentions", False)):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               dropout_p=dropout, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def _exact_refusal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, dropout: float, kwargs) -> str | None:
    library = cpu_gemm.kernel()
    if library is None:
        return "our CPU kernels are off"
    if query.dtype not in (torch.bfloat16, torch.float32) or key.dtype != query.dtype:
        return f"{query.dtype} queries with {key.dtype} keys"
    if query.shape[-1] > library.ouro_attention_max_head_dim() or key.stride(-1) != 1 or value.stride() != key.stride():
        return f"head dim {query.shape[-1]}, a strided head or keys and values laid out apart"
    if attention_mask is not None and (attention_mask.dtype != query.dtype or attention_mask.shape[1] != 1):
        return f"a {attention_mask.dtype} mask of shape {tuple(attention_mask.shape)}"
    if dropout or kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None or kwargs.get("position_bias") is not None:
        return "dropout, attention sinks or a position bias"
    return None


def exact_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    softcap: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Batch-invariant attention (see the module docstring); HF's attention-function signature:
    query (B, H, Q, D), key and value (B, Hkv, S, D), returns (B, Q, H, D). Key and value may
    also be a whole KV slot pool read in place (kvcache.slots.in_place_rows names the slot of
    each batch row)."""
    rows = in_place_rows(key)
    refusal = _exact_refusal(query, key, value, attention_mask, dropout, kwargs)
    if refusal is not None:
        if rows is not None:
            key, value = key[rows], value[rows]
        if refusal not in _said:
            _said.add(refusal)
            log.warning("attention falls back to sdpa for %s: a wide pass may round differently from a one-token pass",
                        refusal)
        return sdpa_without_copies(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                   softcap=softcap, **kwargs)
    batch, heads, queries, dim = query.shape
    if query.stride(-1) != 1:
        query = query.contiguous()
    out = torch.empty(batch, queries, heads, dim, dtype=query.dtype)
    mask_strides = None
    if attention_mask is not None:
        mask = attention_mask.expand(batch, 1, queries, key.shape[2])
        mask_strides = (ctypes.c_int64 * 3)(mask.stride(0), mask.stride(2), mask.stride(3))
    q_strides = (ctypes.c_int64 * 3)(query.stride(0), query.stride(1), query.stride(2))
    kv_strides = (ctypes.c_int64 * 3)(key.stride(0), key.stride(1), key.stride(2))
    scale = scaling if scaling is not None else dim ** -0.5
    cpu_gemm.kernel().ouro_attention(int(query.dtype == torch.bfloat16), query.data_ptr(), q_strides, batch, heads, queries, dim, key.data_ptr(),
                                     value.data_ptr(), None if rows is None else rows.data_ptr(),
                                     key.shape[1], key.shape[2], kv_strides,
                                     None if attention_mask is None else mask.data_ptr(), mask_strides,
                                     float(scale), float(softcap or 0.0), out.data_ptr())
    return out, None


def use_cpu_attention(model: torch.nn.Module) -> bool:
    """Swap the attention of a CPU model: exact_attention for float32 and bfloat16 (sdpa or eager models)
    where our kernels run, else sdpa_without_copies for sdpa models; True if swapped."""
    parameter = next(model.parameters())
    implementation = getattr(model.config, "_attn_implementation", None)
    if parameter.device.type != "cpu" or implementation not in ("sdpa", "eager"):
        return False
    if parameter.dtype in (torch.bfloat16, torch.float32) and cpu_gemm.kernel() is not None:  # eager too (Gemma 2's soft cap)
        AttentionInterface.register(EXACT_NAME, exact_attention)
        AttentionMaskInterface.register(EXACT_NAME, sdpa_mask)
        model.set_attn_implementation(EXACT_NAME)
        return model.config._attn_implementation == EXACT_NAME
    if implementation != "sdpa":
        return False
    if not any(getattr(module, "num_key_value_groups", 1) > 1 for module in model.modules()):
        return False  # no grouped-query attention: HF's sdpa copies nothing
    AttentionInterface.register(NAME, sdpa_without_copies)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME  # a model may refuse it (with a warning)
