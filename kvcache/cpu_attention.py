"""Grouped-query attention on the CPU without copying the keys and values.

HF's sdpa attention repeats every key/value head for its group of query heads (repeat_kv)
whenever a pass has a mask and more than one query: a copy of the rows' whole cache, in every
layer of every verification pass. torch's SDPA takes the groups itself (enable_gqa) with the
same result; on this CPU a layer of 8 rows x 6 tokens over 156 keys (SmolLM2: 9 query heads, 3
key/value heads) took 195 us that way against 479 us with the copy, and 1 row x 16 tokens 56
against 92 us. The model's own modules and masks stay; only the attention function is swapped
(HF's AttentionInterface), and only where the model used sdpa."""
from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "ouroboros_cpu_sdpa"


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


def use_cpu_attention(model: torch.nn.Module) -> bool:
    """Swap the attention of a CPU model that uses sdpa for sdpa_without_copies; True if swapped."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    if not any(getattr(module, "num_key_value_groups", 1) > 1 for module in model.modules()):
        return False  # no grouped-query attention: HF's sdpa copies nothing
    AttentionInterface.register(NAME, sdpa_without_copies)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME  # a model may refuse it (with a warning)
