"""One target forward pass for several requests: ragged KV caches padded into one batch.

Row i holds request i: its cache (base_i entries) right-padded to the longest base L, then its
tree's n_i nodes in columns L..L+n_i-1, padded to the largest tree N. Keys in a cache already
carry their rotary positions, so padding moves no position; new nodes get theirs from
position_ids (base_i + depth). The 4-D mask lets row i's nodes see its own cache entries and
their tree ancestors, never a padded column. After the pass each request's cache gets only its
own n_i new entries appended, so it is laid out exactly as after a single-request pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from verifier.tree import TokenTree


def _layer_tensors(cache: DynamicCache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if layer_idx >= len(cache.layers):
        return None
    layer = cache.layers[layer_idx]
    if layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


def _padded_cache(model: torch.nn.Module, caches: Sequence[DynamicCache], bases: Sequence[int]) -> DynamicCache:
    """One cache of batch len(caches), each row right-padded with zeros to the longest base."""
    batch = DynamicCache(config=model.config)
    longest = max(bases)
    if longest == 0:
        return batch
    for layer_idx in range(model.config.num_hidden_layers):
        present = [_layer_tensors(c, layer_idx) for c in caches]
        reference = next(t[0] for t in present if t is not None)  # (1, heads, length, dim)
        empty = reference.new_zeros(1, reference.shape[1], 0, reference.shape[3])  # a one-token prompt
        keys, values = [], []
        for tensors, base in zip(present, bases):
            key, value = tensors if tensors is not None else (empty, empty)
            keys.append(F.pad(key, (0, 0, 0, longest - base)))
            values.append(F.pad(value, (0, 0, 0, longest - base)))
        batch.update(torch.cat(keys), torch.cat(values), layer_idx)
    return batch


def _batch_mask(trees: Sequence[TokenTree], bases: Sequence[int], width: int) -> torch.Tensor:
    """(B, 1, N, L + N) bool: cache columns up to base_i, then the tree's visibility."""
    longest = max(bases)
    mask = torch.zeros(len(trees), 1, width, longest + width, dtype=torch.bool)
    for row, (tree, base) in enumerate(zip(trees, bases)):
        n = len(tree.tokens)
        mask[row, 0, :, :base] = True
        mask[row, 0, :n, longest : longest + n] = tree.visibility()
        for pad in range(n, width):  # padding queries see only themselves (no empty softmax)
            mask[row, 0, pad, :] = False
            mask[row, 0, pad, longest + pad] = True
    return mask


@torch.inference_mode()
def batched_tree_logits(model: torch.nn.Module, caches: Sequence[DynamicCache], trees: Sequence[TokenTree],
                        bases: Sequence[int]) -> list[torch.Tensor]:
    """Logits (n_i, vocab) for every request's tree; each cache gains its own n_i entries."""
    device = next(model.parameters()).device
    width = max(len(t.tokens) for t in trees)
    longest = max(bases)
    input_ids = torch.tensor([t.tokens + [t.tokens[0]] * (width - len(t.tokens)) for t in trees], device=device)
    positions = torch.tensor([[base + d for d in t.depths] + [base] * (width - len(t.tokens))
                              for t, base in zip(trees, bases)], device=device)
    batch = _padded_cache(model, caches, bases)
    out = model(input_ids=input_ids, position_ids=positions, attention_mask=_batch_mask(trees, bases, width).to(device),
                cache=batch, use_cache=True)
    for layer_idx, layer in enumerate(batch.layers):
        for row, (cache, tree) in enumerate(zip(caches, trees)):
            n = len(tree.tokens)
            cache.update(layer.keys[row : row + 1, :, longest : longest + n],
                         layer.values[row : row + 1, :, longest : longest + n], layer_idx)
    return [out.logits[row, : len(tree.tokens)] for row, tree in enumerate(trees)]
