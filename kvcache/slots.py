"""KV slots: one preallocated K/V buffer per layer for every sequence of a process.

Layer l's keys live in one tensor (slots, kv_heads, max_len + 1, head_dim); a sequence owns a
row (its slot) and a length. A pass over some rows writes each row's new entries in place at
that row's own offset and hands attention the rows it needs: a view when the rows are
consecutive slots, else the whole pool with each row's slot (in_place_rows) where the attention
is our exact kernel, which reads them where they lie, else one gather. Nothing is padded into a batch and split back, a crop is a
length reset, and an accepted branch's entries move inside their row. The last column is a
scratch column: padding tokens of a ragged pass write there and nobody reads it. The buffers
are allocated empty, so on a CPU memory is touched only as rows grow into it (a GPU reserves
it all at once); the bound is SlotPool.nbytes.

Entry j of a row sits at absolute position j (its rotary position), as in our plain caches, so
kvcache.attention's masks and rules apply unchanged."""
from __future__ import annotations

import heapq
import weakref
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


DEFAULT_MAX_LEN = 4096


def resolve_max_len(config, max_len: int | None, clamp: bool = False) -> int:
    """--max-len: default the smaller of the model's context and 4096; never past the context
    (refused, or with `clamp` cut to it: a draft with a shorter context than its target's)."""
    context = int(getattr(config.get_text_config(decoder=True), "max_position_embeddings", None) or 1 << 30)
    if max_len is None:
        return min(context, DEFAULT_MAX_LEN)
    if clamp:
        max_len = min(max_len, context)
    if not 2 <= max_len <= context:
        raise ValueError(f"--max-len must be within 2..{context} (the model's context), got {max_len}")
    return max_len


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a model's self-attention, from its config."""
    text = config.get_text_config(decoder=True)
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers, heads, head_dim


def slot_bytes(config, num_slots: int, max_len: int, dtype: torch.dtype) -> int:
    layers, heads, head_dim = kv_shape(config)
    return 2 * layers * num_slots * heads * (max_len + 1) * head_dim * torch.finfo(dtype).bits // 8


@dataclass(frozen=True)
class PassPlan:
    """Where one pass writes and what it reads: rows (b,), write columns (b, w), and the columns
    0..length-1 of each row handed to attention."""

    rows: torch.Tensor
    row_slice: slice | None  # the rows as a slice when they are consecutive (a view, no copy)
    write_columns: torch.Tensor
    length: int
    single: tuple[int, int, int] | None = None  # one row: (slot, first column, end): a plain slice copy


IN_PLACE_ATTENTION = "ouroboros_cpu_exact"  # the attention that reads a pool's rows in place (kvcache.cpu_attention)


def _in_place(pool_view: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    pool_view.slot_rows = rows
    return pool_view


def in_place_rows(states: torch.Tensor) -> torch.Tensor | None:
    """For keys or values a pass handed attention as the whole pool (no gather): batch row b's
    slot, rows[b] (int64 on the CPU); None for a tensor of the batch's own rows."""
    return getattr(states, "slot_rows", None)


class _PassLayer(CacheLayerMixin):
    """What the model's attention layer l calls during a pass: write the new entries, return the rows."""

    is_sliding = False
    is_croppable = False

    def __init__(self, pool: SlotPool, layer_idx: int) -> None:
        super().__init__()
        self.pool, self.layer_idx = weakref.proxy(pool), layer_idx  # no cycle: a dropped pool frees at once
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        plan, keys, values = self.pool.plan, self.pool.keys[self.layer_idx], self.pool.values[self.layer_idx]
        if key_states.shape[1:2] + key_states.shape[3:] != keys.shape[1:2] + keys.shape[3:]:
            raise ValueError(f"layer {self.layer_idx} produced keys of shape {tuple(key_states.shape)}; the KV slots "
                             f"were sized from the config for {tuple(keys.shape)}")
        if plan.single is not None:
            row, start, end = plan.single
            keys[row, :, start:end] = key_states[0]
            values[row, :, start:end] = value_states[0]
        else:
            rows = plan.rows[:, None]
            keys[rows, :, plan.write_columns] = key_states.transpose(1, 2).to(keys.dtype)
            values[rows, :, plan.write_columns] = value_states.transpose(1, 2).to(values.dtype)
        if plan.row_slice is not None:
            return keys[plan.row_slice, :, : plan.length], values[plan.row_slice, :, : plan.length]
        if self.pool.reads_in_place:
            return _in_place(keys[:, :, : plan.length], plan.rows), _in_place(values[:, :, : plan.length], plan.rows)
        # index_select copies whole rows: 2.6x faster than keys[plan.rows] (advanced indexing) here
        return keys[:, :, : plan.length].index_select(0, plan.rows), values[:, :, : plan.length].index_select(0, plan.rows)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.pool.plan.length, 0

    def get_seq_length(self) -> int:
        plan = self.pool.plan
        return plan.length - plan.write_columns.shape[1] if plan is not None else 0

    def get_max_length(self) -> int:
        return self.pool.max_len


class SlotView:
    """Layer l of one slot as our plain caches show it: `keys`/`values` (1, heads, length, dim)."""

    def __init__(self, pool: SlotPool, slot: int, layer_idx: int) -> None:
        self.pool, self.slot, self.layer_idx = pool, slot, layer_idx

    @property
    def keys(self) -> torch.Tensor:
        return self.pool.keys[self.layer_idx][self.slot : self.slot + 1, :, : self.pool.lengths[self.slot]]

    @property
    def values(self) -> torch.Tensor:
        return self.pool.values[self.layer_idx][self.slot : self.slot + 1, :, : self.pool.lengths[self.slot]]


class NoFreeSlot(RuntimeError):
    """Every KV slot is taken: a process holds no more sessions at once than its pool has slots."""


class Slot:
    """A sequence's row in a SlotPool. The row returns to the pool on free(), or when this
    object is dropped; a freed slot refuses passes."""

    def __init__(self, pool: SlotPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.layers = [SlotView(pool, index, layer) for layer in range(len(pool.keys))]
        self._release = weakref.finalize(self, pool.release, index)

    @property
    def is_free(self) -> bool:
        return not self._release.alive

    def free(self) -> None:
        """Give the row back now (the owner is done): the next request can have it at once."""
        self._release()

    def get_seq_length(self) -> int:
        return 0 if self.is_free else self.pool.lengths[self.index]

    def keep(self, indices: list[int]) -> None:
        """Keep these entries, in order (each index >= its new place): a crop when they are
        0..n-1, else the moved ones are gathered and written into place."""
        first_moved = next((i for i, index in enumerate(indices) if index != i), len(indices))
        if first_moved < len(indices):
            source = torch.tensor(indices[first_moved:], device=self.pool.device)
            for buffer in (*self.pool.keys, *self.pool.values):
                row = buffer[self.index]
                row[:, first_moved : len(indices)] = row.index_select(1, source)
        self.pool.lengths[self.index] = len(indices)


class SlotPool:
    def __init__(self, config, num_slots: int, max_len: int, dtype: torch.dtype, device: torch.device | str) -> None:
        if num_slots < 1 or max_len < 2:
            raise ValueError(f"KV slots need >= 1 slot of >= 2 tokens, got {num_slots} x {max_len}")
        layers, heads, head_dim = kv_shape(config)
        self.num_slots, self.max_len, self.device = num_slots, max_len, torch.device(device)
        shape = (num_slots, heads, max_len + 1, head_dim)  # + the scratch column
        # empty: memory is touched (and zeroed, see begin_pass) only as rows grow into it
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.num_finite = [0] * num_slots  # leading columns of a row written or zeroed at least once
        # our exact attention reads a pass's rows where they lie; any other gets them gathered
        self.reads_in_place = (self.device.type == "cpu"
                               and getattr(config, "_attn_implementation", None) == IN_PLACE_ATTENTION)
        self.nbytes = sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
        self.lengths = [0] * num_slots
        self._free = list(range(num_slots))  # a heap: the lowest slot first keeps busy rows consecutive
        self.cache = Cache(layers=[_PassLayer(self, layer) for layer in range(layers)])
        self.plan: PassPlan | None = None

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> Slot | None:
        """A free row (empty), or None when every slot is taken."""
        if not self._free:
            return None
        index = heapq.heappop(self._free)
        self.lengths[index] = 0
        return Slot(self, index)

    def release(self, index: int) -> None:
        self.lengths[index] = 0
        heapq.heappush(self._free, index)

    def begin_pass(self, slots: list[Slot], widths: list[int]) -> Cache:
        """Plan a pass that feeds widths[i] new tokens after each slot's entries (the batch is as
        wide as the widest; the rest of a row is padding, written to the scratch column). Returns
        the Cache to give the model; the lengths grow by the widths."""
        bases = self._check_pass(slots, widths)
        width = max(widths)
        indices = [slot.index for slot in slots]
        columns = torch.full((len(slots), width), self.max_len, dtype=torch.long)
        for i, (base, n) in enumerate(zip(bases, widths)):
            columns[i, :n] = torch.arange(base, base + n)
        is_consecutive = indices == list(range(indices[0], indices[0] + len(indices)))
        plan = PassPlan(rows=torch.tensor(indices, device=self.device),
                        row_slice=slice(indices[0], indices[-1] + 1) if is_consecutive else None,
                        write_columns=columns.to(self.device),
                        length=max(base + n for base, n in zip(bases, widths)),
                        single=(indices[0], bases[0], bases[0] + width) if len(slots) == 1 else None)
        return self.begin_planned_pass(slots, widths, plan)

    def begin_planned_pass(self, slots: list[Slot], widths: list[int], plan: PassPlan) -> Cache:
        """begin_pass with a plan made by the caller (kvcache.graphs: static tensors, a bucketed
        length); the plan must write row i's new entries at columns base_i.. of slot i."""
        bases = self._check_pass(slots, widths)
        self.plan = plan
        for slot, base, n in zip(slots, bases, widths):
            self.lengths[slot.index] = base + n
            self._make_finite(slot.index, plan.length)
        return self.cache

    def _check_pass(self, slots: list[Slot], widths: list[int]) -> list[int]:
        """Each slot's length before the pass; errors for a freed slot or a pass past --max-len."""
        if any(slot.is_free for slot in slots):
            raise RuntimeError("a pass on a freed KV slot: its session was already closed")
        bases = [slot.get_seq_length() for slot in slots]
        for base, n in zip(bases, widths):
            if base + n > self.max_len:
                raise ValueError(f"a pass of {n} tokens after {base} cached ones exceeds the KV slot length "
                                 f"{self.max_len} (--max-len)")
        return bases

    def _make_finite(self, index: int, length: int) -> None:
        """Attention reads columns 0..length-1 of every row in a pass, masked or not; masked
        weights are 0, and 0 * NaN is NaN, so never-written memory there is zeroed first."""
        if self.num_finite[index] < length:
            for buffer in (*self.keys, *self.values):
                buffer[index, :, self.num_finite[index] : length].zero_()
            self.num_finite[index] = length

    def end_pass(self) -> None:
        self.plan = None
