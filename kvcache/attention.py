"""Attention kinds of a model's layers, the caches both engines keep, and the masks that apply
every kind: full, sliding window, chunked, and alternating mixes of them (Gemma 2).

Every session's cache is a KV slot (kvcache.slots), and every custom mask goes through here. A slot
keeps every entry of every layer (a sliding layer's cache in transformers keeps only its last
window-1 entries, too few for a tree pass and impossible to crop back), so the window is applied
by the mask instead: transformers
does not apply it to a custom 4-D mask. The rules, at absolute positions q (query) and k (key),
are transformers' own (masking_utils): sliding window W sees k with q - W < k <= q; chunk C sees
k with k // C == q // C."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers.cache_utils import get_layer_types_and_kwargs

from kvcache.slots import NoFreeSlot, Slot, SlotPool

FULL, SLIDING, CHUNKED = "full_attention", "sliding_attention", "chunked_attention"
SUPPORTED_LAYER_TYPES = (FULL, SLIDING, CHUNKED)
# families whose cache holds recurrent (SSM / linear-attention) state: it cannot be cropped
RECURRENT_MODEL_TYPES = frozenset({
    "mamba", "mamba2", "falcon_mamba", "rwkv", "recurrent_gemma", "jamba", "zamba", "zamba2", "bamba",
    "falcon_h1", "granitemoehybrid", "nemotron_h", "lfm2", "lfm2_moe", "qwen3_next", "xlstm", "minimax",
})


@dataclass(frozen=True)
class AttentionKind:
    layer_type: str  # transformers' name, the key of a per-type mask dict
    span: int | None = None  # the window (sliding) or chunk size (chunked)


def attention_kinds(config) -> list[AttentionKind]:
    """One AttentionKind per decoder layer; ValueError for a model we cannot keep in step."""
    text = config.get_text_config(decoder=True)
    name = getattr(text, "model_type", "this model")
    if name in RECURRENT_MODEL_TYPES:
        raise ValueError(f"{name} models keep recurrent state in their cache, which cannot be cropped back to "
                         "the verified text: speculative decoding here needs attention-only models")
    layer_types, kwargs = get_layer_types_and_kwargs(text)
    kinds = []
    for layer_type, layer_kwargs in zip(layer_types, kwargs):
        if layer_type not in SUPPORTED_LAYER_TYPES:
            raise ValueError(f"{name} has {layer_type!r} layers, whose cache cannot be cropped back to the verified "
                             f"text; supported layer types: {', '.join(SUPPORTED_LAYER_TYPES)}")
        span = layer_kwargs.get("sliding_window") if layer_type != FULL else None
        kinds.append(AttentionKind(layer_type, int(span) if span is not None else None))
    return kinds


def new_cache(slots: SlotPool) -> Slot:
    """An empty cache for a new session: a free row of the KV slot pool."""
    slot = slots.allocate()
    if slot is None:
        raise NoFreeSlot(f"all {slots.num_slots} KV slots are taken (--max-sessions {slots.num_slots}): "
                         "no more sessions at once")
    return slot


def _allowed_by_kind(kind: AttentionKind, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """(B, Q, K) bool: what the layer kind lets a query at position q see at position k."""
    q, k = query_positions[:, :, None], key_positions[:, None, :]
    if kind.layer_type == SLIDING:
        return k > q - kind.span
    if kind.layer_type == CHUNKED:
        return torch.div(k, kind.span, rounding_mode="floor") == torch.div(q, kind.span, rounding_mode="floor")
    return torch.ones(q.shape[0], q.shape[1], k.shape[2], dtype=torch.bool, device=q.device)


def layer_masks(kinds: list[AttentionKind], visible: torch.Tensor, query_positions: torch.Tensor,
                key_positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive masks (B, 1, Q, K) for a pass whose `visible` (B, Q, K) bool says which key each
    query may attend to (tree or lookahead structure), narrowed by each layer kind's rule. One
    tensor when every layer has the same kind, else one per layer type (the models that mix kinds
    take a dict). Float, not bool: eager attention adds the mask to its scores."""
    per_type: dict[str, AttentionKind] = {}
    for kind in kinds:
        if per_type.setdefault(kind.layer_type, kind) != kind:
            raise ValueError(f"layers of type {kind.layer_type} have different spans: not supported")
    floor = torch.finfo(dtype).min
    masks = {}
    for layer_type, kind in per_type.items():
        allowed = visible & _allowed_by_kind(kind, query_positions, key_positions)
        masks[layer_type] = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, floor)[:, None]
    return next(iter(masks.values())) if len(masks) == 1 else masks


@dataclass(frozen=True)
class BatchRow:
    tokens: list[int]  # the new tokens of this sequence
    positions: list[int]  # their positions (base + depth for a tree)
    visible: torch.Tensor  # (n, n) bool: new token q may attend to new token k


def pass_visibility(bases: list[int], rows: list[BatchRow], num_rows: int, width: int, length: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one builder of a pass's attention inputs, for eager, batched and graphed passes alike:
    (visible (R, W, L) bool, query positions (R, W), key positions (R, L)) on the host. Row i's
    new token q, at rows[i].positions[q], sees the row's base_i cached entries (entry j sits at
    position j) and, in columns base_i.., the new tokens rows[i].visible[q] allows. Padding (the
    tokens past a row's width, rows past the real ones) sits at position 0 and sees column 0
    alone, never an empty softmax. The layer kinds' rules apply on top (layer_masks)."""
    visible = torch.zeros(num_rows, width, length, dtype=torch.bool)
    visible[:, :, 0] = True
    query_positions = torch.zeros(num_rows, width, dtype=torch.long)
    key_positions = torch.arange(length).repeat(num_rows, 1)
    for i, (base, row) in enumerate(zip(bases, rows)):
        n = len(row.tokens)
        visible[i, :n, 0] = False
        visible[i, :n, :base] = True
        visible[i, :n, base : base + n] = row.visible
        query_positions[i, :n] = torch.tensor(row.positions)
        key_positions[i, base : base + n] = query_positions[i, :n]
    return visible, query_positions, key_positions


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.inference_mode()
def forward_one(model: torch.nn.Module, kinds: list[AttentionKind], cache: Slot, tokens: list[int],
                positions: list[int], visible: torch.Tensor, logits_to_keep: list[int] | int = 0,
                past: tuple[torch.Tensor, list[int]] | None = None) -> torch.Tensor:
    """One pass of one sequence after its cache (a KV slot): new token i sits
    at positions[i] and sees every cached entry (entry j sits at position j) and the new tokens
    `visible[i]` allows, as its layer kind permits. `past` = (seen, positions) narrows that for
    a cache holding entries of several continuations (drafter.outcomes): seen[i, j] says whether
    new token i sees entry j, which sits at positions[j]. Returns the logits (rows of
    `logits_to_keep`, all when 0)."""
    device = next(model.parameters()).device
    base = cache.get_seq_length()
    n = len(tokens)
    seen, query_positions, key_positions = pass_visibility([base], [BatchRow(tokens, positions, visible.cpu())], 1, n,
                                                           base + n)
    if past is not None:
        seen[0, :, :base] = past[0].cpu()
        key_positions[0, :base] = torch.tensor(past[1], dtype=torch.long)
    query_positions = query_positions.to(device)
    if n == 1 and past is None and all(kind.layer_type == FULL for kind in kinds):
        mask = None  # one query that sees everything: no mask at all (sdpa's fastest path)
    else:
        mask = layer_masks(kinds, seen.to(device), query_positions, key_positions.to(device), model_dtype(model))
    keep = torch.tensor(logits_to_keep, device=device) if isinstance(logits_to_keep, list) else logits_to_keep
    with model_cache([cache], [n]) as model_view:
        out = model(input_ids=torch.tensor([tokens], device=device), position_ids=query_positions,
                    attention_mask=mask, cache=model_view, use_cache=True, logits_to_keep=keep)
    return out.logits[0]


@contextlib.contextmanager
def model_cache(slots: list[Slot], widths: list[int]):
    """The Cache object to hand the model for a pass over these KV slots: the pool's pass cache
    (kvcache.slots), whose lengths are restored if the pass fails."""
    pool = slots[0].pool
    bases = [slot.get_seq_length() for slot in slots]
    try:
        yield pool.begin_pass(slots, widths)
    except BaseException:
        for slot, base in zip(slots, bases):
            pool.lengths[slot.index] = base
        raise
    finally:
        pool.end_pass()


def prefill(model: torch.nn.Module, kinds: list[AttentionKind], cache: Slot, tokens: list[int]) -> None:
    """Feed `tokens` causally after the cache (only the last position's logits are computed)."""
    base = cache.get_seq_length()
    n = len(tokens)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    forward_one(model, kinds, cache, tokens, list(range(base, base + n)), causal, logits_to_keep=1)
