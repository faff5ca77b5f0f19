"""One forward pass for several sequences whose KV slots (kvcache.slots) hold different lengths.

Each row reads and writes its own slot in place: row i's key columns are its slot's, its base_i
cached entries then its n_i new tokens; columns past them, up to the longest row, are masked
out. Keys in a slot already carry their rotary positions; new tokens get theirs from the row's
positions. The 4-D mask lets row i's new tokens see its own cached entries and the new tokens its
`visible` matrix allows, as each layer kind permits. Padding queries (rows narrower than the
widest) see only column 0 and write to the slot's scratch column, so each slot ends laid out
exactly as after a pass of that row alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from kvcache.attention import BatchRow, AttentionKind, forward_one, layer_masks, model_cache, model_dtype, pass_visibility
from kvcache.packed import has_packed_layers, only_tokens
from kvcache.slots import Slot

__all__ = ["BatchRow", "batched_forward", "run_pass"]


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
def batched_forward(model: torch.nn.Module, kinds: list[AttentionKind], slots: Sequence[Slot],
                    rows: Sequence[BatchRow]) -> list[torch.Tensor]:
    """Logits (n_i, vocab) for every row's new tokens, in one pass over the KV slots (of one
    pool); each slot gains its own n_i entries."""
    if len({id(slot.pool) for slot in slots}) > 1:
        raise ValueError("a batched pass takes the KV slots of one pool")
    order = sorted(range(len(slots)), key=lambda i: slots[i].index)  # slot order: consecutive slots make a view
    logits: list[torch.Tensor | None] = [None] * len(rows)
    for i, row_logits in zip(order, _slots_forward(model, kinds, [slots[i] for i in order], [rows[i] for i in order])):
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
    visible, query_positions, key_positions = pass_visibility(bases, list(rows), len(rows), width, length)
    mask = layer_masks(kinds, visible.to(device), query_positions.to(device), key_positions.to(device),
                       model_dtype(model))
    input_ids = torch.tensor([r.tokens + [r.tokens[0]] * (width - len(r.tokens)) for r in rows], device=device)
    real = None  # packed layers skip the padding (kvcache.packed.only_tokens)
    if sum(widths) < len(rows) * width and has_packed_layers(model):
        real = torch.tensor([i * width + j for i, n in enumerate(widths) for j in range(n)], device=device)
    with model_cache(list(slots), widths) as cache, only_tokens(real, len(rows), width):
        out = model(input_ids=input_ids, position_ids=query_positions.to(device), attention_mask=mask, cache=cache,
                    use_cache=True)
    return [out.logits[i, :n] for i, n in enumerate(widths)]
