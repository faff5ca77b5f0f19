"""One forward pass for several sequences whose KV caches have different lengths.

In KV slots (kvcache.slots) each row reads and writes its own slot in place. Otherwise (plain
DynamicCaches), row i holds sequence i: its cache (base_i entries) right-padded with zeros to the longest base
L, then its n_i new tokens in columns L..L+n_i-1, padded to the widest row N. Keys in a cache
already carry their rotary positions, so padding moves no position; new tokens get theirs from
the row's positions. The 4-D mask lets row i's new tokens see its own cache entries and the new
tokens its `visible` matrix allows, never a padded column. After the pass each cache gets only
its own n_i new entries appended, so it is laid out exactly as after a pass of that row alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from kvcache.attention import AttentionKind, forward_one, layer_masks, model_cache, model_dtype, new_cache
from kvcache.packed import has_packed_layers, only_tokens
from kvcache.slots import Slot


@dataclass(frozen=True)
class BatchRow:
    tokens: list[int]  # the new tokens of this sequence
    positions: list[int]  # their positions (base + depth for a tree)
    visible: torch.Tensor  # (n, n) bool: new token q may attend to new token k


def _layer_tensors(cache: DynamicCache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if layer_idx >= len(cache.layers):
        return None
    layer = cache.layers[layer_idx]
    if layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


def _padded_cache(model: torch.nn.Module, caches: Sequence[DynamicCache], bases: Sequence[int]) -> DynamicCache:
    """One cache of batch len(caches), each row right-padded with zeros to the longest base."""
    batch = new_cache()
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


def _batch_visibility(rows: Sequence[BatchRow], bases: Sequence[int], width: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, L + N) bool: cache columns up to base_i, then the row's own visibility; with the
    query positions (B, N) and key positions (B, L + N) the layer kinds' rules are applied at."""
    longest = max(bases)
    visible = torch.zeros(len(rows), width, longest + width, dtype=torch.bool)
    query_positions = torch.zeros(len(rows), width, dtype=torch.long)
    key_positions = torch.arange(longest + width).repeat(len(rows), 1)
    for i, (row, base) in enumerate(zip(rows, bases)):
        n = len(row.tokens)
        visible[i, :, :base] = True
        visible[i, :n, longest : longest + n] = row.visible
        for pad in range(n, width):  # padding queries see only themselves (no empty softmax)
            visible[i, pad, :] = False
            visible[i, pad, longest + pad] = True
        padded = row.positions + [row.positions[0]] * (width - n)
        query_positions[i] = torch.tensor(padded)
        key_positions[i, longest:] = query_positions[i]
    return visible, query_positions, key_positions


def run_pass(model: torch.nn.Module, kinds: list[AttentionKind], graphs, caches: Sequence, rows: Sequence[BatchRow],
             keep: Sequence[Sequence[int]] | None = None) -> list[torch.Tensor]:
    """The one choice of how a pass runs: the CUDA graph of its bucket where `graphs`
    (kvcache.graphs.GraphedPasses, or None) has one, else eagerly: one row alone (its logits
    only at `keep[0]`, saving the output layer the rest), several in one batched pass. Returns
    each row's logits, at the rows of `keep[i]` when given."""
    bucket = graphs.bucket(caches, rows) if graphs is not None else None
    if bucket is None and len(rows) == 1:
        row = rows[0]
        return [forward_one(model, kinds, caches[0], row.tokens, row.positions, row.visible,
                            logits_to_keep=list(keep[0]) if keep is not None else 0)]
    logits = graphs.forward(caches, rows, bucket) if bucket is not None else batched_forward(model, kinds, caches, rows)
    return logits if keep is None else [row_logits[list(k)] for row_logits, k in zip(logits, keep)]


@torch.inference_mode()
def batched_forward(model: torch.nn.Module, kinds: list[AttentionKind], caches: Sequence,
                    rows: Sequence[BatchRow]) -> list[torch.Tensor]:
    """Logits (n_i, vocab) for every row's new tokens; each cache gains its own n_i entries.
    Rows in KV slots of one pool go in one pass over the slots; any others (DynamicCaches: no
    slot was free) in one padded pass."""
    # rows in slot order: consecutive slots then make a view, not a gather
    in_slots = sorted((i for i, cache in enumerate(caches) if isinstance(cache, Slot)), key=lambda i: caches[i].index)
    if len({id(caches[i].pool) for i in in_slots}) > 1:
        raise ValueError("a batched pass takes the KV slots of one pool")
    others = [i for i in range(len(caches)) if i not in set(in_slots)]
    logits: list[torch.Tensor | None] = [None] * len(rows)
    for group, forward in ((in_slots, _slots_forward), (others, _padded_forward)):
        if group:
            for i, row_logits in zip(group, forward(model, kinds, [caches[i] for i in group], [rows[i] for i in group])):
                logits[i] = row_logits
    return logits


def _slots_forward(model: torch.nn.Module, kinds: list[AttentionKind], slots: Sequence, rows: Sequence[BatchRow]
                   ) -> list[torch.Tensor]:
    """Row i's key columns are its slot's: its bases_i cached entries, then its n_i new ones,
    then columns of no concern up to the longest row (masked out). Padding queries see column 0."""
    device = next(model.parameters()).device
    bases = [slot.get_seq_length() for slot in slots]
    widths = [len(row.tokens) for row in rows]
    width, length = max(widths), max(b + n for b, n in zip(bases, widths))
    visible = torch.zeros(len(rows), width, length, dtype=torch.bool)
    query_positions = torch.zeros(len(rows), width, dtype=torch.long)
    key_positions = torch.arange(length).repeat(len(rows), 1)
    for i, (row, base, n) in enumerate(zip(rows, bases, widths)):
        visible[i, :n, :base] = True
        visible[i, :n, base : base + n] = row.visible
        visible[i, n:, 0] = True
        query_positions[i, :n] = torch.tensor(row.positions)
        key_positions[i, base : base + n] = query_positions[i, :n]
    mask = layer_masks(kinds, visible.to(device), query_positions.to(device), key_positions.to(device),
                       model_dtype(model))
    input_ids = torch.tensor([r.tokens + [r.tokens[0]] * (width - len(r.tokens)) for r in rows], device=device)
    real = None  # packed layers skip the padding (kvcache.packed.only_tokens)
    if sum(widths) < len(rows) * width and has_packed_layers(model):
        real = torch.tensor([i * width + j for i, n in enumerate(widths) for j in range(n)], device=device)
    with model_cache(None, widths, slots=list(slots)) as cache, only_tokens(real, len(rows), width):
        out = model(input_ids=input_ids, position_ids=query_positions.to(device), attention_mask=mask, cache=cache,
                    use_cache=True)
    return [out.logits[i, :n] for i, n in enumerate(widths)]


def _padded_forward(model: torch.nn.Module, kinds: list[AttentionKind], caches: Sequence[DynamicCache],
                    rows: Sequence[BatchRow]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    bases = [cache.get_seq_length() for cache in caches]
    width = max(len(row.tokens) for row in rows)
    longest = max(bases)
    input_ids = torch.tensor([r.tokens + [r.tokens[0]] * (width - len(r.tokens)) for r in rows], device=device)
    visible, query_positions, key_positions = _batch_visibility(rows, bases, width)
    mask = layer_masks(kinds, visible.to(device), query_positions.to(device), key_positions.to(device),
                       model_dtype(model))
    batch = _padded_cache(model, caches, bases)
    out = model(input_ids=input_ids, position_ids=query_positions.to(device), attention_mask=mask, cache=batch,
                use_cache=True)
    for layer_idx, layer in enumerate(batch.layers):
        for i, (cache, row) in enumerate(zip(caches, rows)):
            n = len(row.tokens)
            cache.update(layer.keys[i : i + 1, :, longest : longest + n],
                         layer.values[i : i + 1, :, longest : longest + n], layer_idx)
    return [out.logits[i, : len(row.tokens)] for i, row in enumerate(rows)]
