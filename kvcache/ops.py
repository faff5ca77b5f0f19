"""Cache surgery on our caches (kvcache.attention.new_cache): keep chosen positions (crop, or
compact accepted nodes)."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from kvcache.slots import Slot


def keep_cache_entries(cache: DynamicCache, indices: list[int]) -> None:
    """Keep only the given sequence positions of every layer, in order: a prefix crop (a view)
    when they are 0..n-1, else a gather that moves kept entries into place. Keys keep the
    rotary positions they were computed at, so a moved entry must already sit at its final one.
    Every layer must keep all its entries: a sliding layer's running count would not follow."""
    if isinstance(cache, Slot):
        cache.keep(indices)
        return
    is_prefix = indices == list(range(len(indices)))
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False) or hasattr(layer, "cumulative_length"):
            raise TypeError(f"{type(layer).__name__} cannot be cut: make caches with kvcache.attention.new_cache")
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        if is_prefix:
            layer.keys, layer.values = layer.keys[..., : len(indices), :], layer.values[..., : len(indices), :]
        else:
            index = torch.tensor(indices, device=layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(-2, index), layer.values.index_select(-2, index)
