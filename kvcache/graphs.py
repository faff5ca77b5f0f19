"""The verification pass as CUDA graphs, captured at a few bucketed shapes.

On a GPU a small model's pass is bound by kernel launches, not by its weights: hundreds of
kernels of a few microseconds each. A CUDA graph replays them all with one launch. It needs
fixed shapes and fixed addresses, which KV slots (kvcache.slots) give: a pass of R rows of W
tokens that reads L key columns of each row is one bucket (R, W, L), each rounded up to a power
of two (L to at least MIN_LENGTH, at most the slot length). Its inputs live in static tensors:
- rows past the real ones are padding: they write only the scratch column of the first real
  row's slot and read its column 0;
- tokens past a row's width are padding too: they write the scratch column and see column 0;
- a real row's queries see its cached columns and its new ones as its tree allows, as in
  kvcache.batch, through the same layer-kind masks (sliding windows included).
The static pass is an ordinary forward of the HF model over those tensors, so it runs (and is
tested) on a CPU too; on CUDA it is captured once per bucket, after two warm-up passes on the
real inputs (they write the same entries the real pass writes), and replayed from then on. The
common buckets (START_WIDTHS x every row bucket, at MIN_LENGTH) are captured at start-up on a
borrowed slot (capture_common), so no early request pays for them; the rest on first use. All graphs share one memory pool (they never run at once) and write their logits into
one buffer, so their memory is one pass's, not one per bucket. A model whose forward cannot be
captured (a CPU sync inside, say) is run eagerly from then on, with one warning."""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvcache.attention import AttentionKind, BatchRow, layer_masks, model_dtype, pass_visibility
from kvcache.slots import PassPlan, Slot, SlotPool

MIN_LENGTH = 256  # the shortest key length a graph reads (shorter contexts share it)
MAX_WIDTH = 64  # wider passes (a prefill) run eagerly: they are bound by arithmetic, not launches
MAX_TOKENS = 256  # rows x width of the largest graph; more runs eagerly
# Graphs kept (least recently used dropped past it). Every bucket a default pool can reach fits
# (16 rows x 4096 columns: 160, reachable_buckets), so none is dropped and captured again mid-request;
# their static inputs take about r*w*L mask entries each, some 60 MB for all 160 in float32.
MAX_GRAPHS = 256
MAX_STATIC_BYTES = 256 << 20  # and their static inputs within this (long contexts: fewer graphs kept)
START_WIDTHS = (1, 2, 4, 8, 16)  # widths captured at start-up, each for every row bucket, at MIN_LENGTH


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class Bucket:
    rows: int
    width: int
    length: int


def bucket_for(num_rows: int, width: int, length: int, max_rows: int, max_len: int) -> Bucket | None:
    """The bucket a pass of `num_rows` rows, `width` tokens wide, reading `length` key columns
    runs in; None when it is past the largest (it runs eagerly)."""
    rows, width = _power_of_two_at_least(num_rows), _power_of_two_at_least(width)
    if width > MAX_WIDTH or rows * width > MAX_TOKENS or rows > _power_of_two_at_least(max_rows):
        return None
    return Bucket(rows, width, min(max(_power_of_two_at_least(length), MIN_LENGTH), max_len))


def reachable_buckets(max_rows: int, max_len: int) -> list[Bucket]:
    """Every bucket bucket_for can give a pool of `max_rows` slots of `max_len` tokens."""
    lengths = sorted({min(max(1 << k, MIN_LENGTH), max_len) for k in range(max_len.bit_length() + 1)})
    found = []
    for rows_log in range(_power_of_two_at_least(max_rows).bit_length()):
        for width_log in range(MAX_WIDTH.bit_length()):
            bucket = bucket_for(1 << rows_log, 1 << width_log, 1, max_rows, max_len)
            if bucket is not None and bucket.rows == 1 << rows_log and bucket.width == 1 << width_log:
                found += [Bucket(bucket.rows, bucket.width, length) for length in lengths]
    return found


class _StaticPass:
    """One bucket's input tensors, their pass plan, and (on CUDA) its captured graph."""

    def __init__(self, bucket: Bucket, kinds: list[AttentionKind], pool: SlotPool, dtype: torch.dtype) -> None:
        device, (r, w, length) = pool.device, (bucket.rows, bucket.width, bucket.length)
        self.bucket = bucket
        self.input_ids = torch.zeros(r, w, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(r, w, dtype=torch.long, device=device)
        self.plan = PassPlan(rows=torch.zeros(r, dtype=torch.long, device=device), row_slice=None,
                             write_columns=torch.full((r, w), pool.max_len, dtype=torch.long, device=device),
                             length=length)
        self.masks = layer_masks(kinds, torch.ones(r, w, length, dtype=torch.bool, device=device),
                                 self.position_ids, torch.zeros(r, length, dtype=torch.long, device=device), dtype)
        self.graph: torch.cuda.CUDAGraph | None = None
        masks = list(self.masks.values()) if isinstance(self.masks, dict) else [self.masks]
        self.nbytes = sum(t.numel() * t.element_size() for t in (*masks, self.input_ids, self.position_ids,
                                                                 self.plan.rows, self.plan.write_columns))

    def fill(self, kinds: list[AttentionKind], pool: SlotPool, slots: Sequence[Slot], rows: Sequence[BatchRow],
             dtype: torch.dtype) -> None:
        """Copy one pass's inputs into the static tensors (built on the host, one copy each)."""
        r, w, length = self.bucket.rows, self.bucket.width, self.bucket.length
        bases = [slot.get_seq_length() for slot in slots]
        visible, positions, key_positions = pass_visibility(bases, list(rows), r, w, length)
        ids = torch.zeros(r, w, dtype=torch.long)
        row_index = torch.full((r,), slots[0].index, dtype=torch.long)
        columns = torch.full((r, w), pool.max_len, dtype=torch.long)
        for i, (slot, row, base) in enumerate(zip(slots, rows, bases)):
            n = len(row.tokens)
            ids[i, :n] = torch.tensor(row.tokens)
            row_index[i] = slot.index
            columns[i, :n] = torch.arange(base, base + n)
        masks = layer_masks(kinds, visible, positions, key_positions, dtype)
        for static, host in ((self.input_ids, ids), (self.position_ids, positions), (self.plan.rows, row_index),
                             (self.plan.write_columns, columns)):
            static.copy_(host, non_blocking=True)
        if isinstance(masks, dict):
            for layer_type, mask in masks.items():
                self.masks[layer_type].copy_(mask, non_blocking=True)
        else:
            self.masks.copy_(masks, non_blocking=True)


class GraphedPasses:
    """Verification passes over KV slots at bucketed static shapes: CUDA graphs where `capture`
    (a CUDA device), else the same static pass run eagerly (what the tests check on a CPU)."""

    def __init__(self, model: torch.nn.Module, kinds: list[AttentionKind], pool: SlotPool,
                 capture: bool | None = None) -> None:
        self.model, self.kinds, self.pool = model, kinds, pool
        self.dtype = model_dtype(model)
        self.capture = pool.device.type == "cuda" if capture is None else capture
        self.passes: OrderedDict[Bucket, _StaticPass] = OrderedDict()
        self.logits: torch.Tensor | None = None  # (MAX_TOKENS, vocab): every graph writes here
        self.memory_pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.num_captured = 0
        self.capture_failed = False  # the forward could not be captured: every pass runs eagerly
        num_reachable = len(reachable_buckets(pool.num_slots, pool.max_len))
        if self.capture and num_reachable > MAX_GRAPHS:
            logging.info("%d pass shapes can reach CUDA graphs, %d are kept: the least recently used are captured "
                         "again when next needed (fewer --max-sessions or a shorter --max-len keep them all)",
                         num_reachable, MAX_GRAPHS)

    def bucket(self, slots: Sequence[Slot], rows: Sequence[BatchRow]) -> Bucket | None:
        """The bucket of this pass, or None if it runs eagerly (too wide, too many rows, or not
        every row in this pool's slots)."""
        if not slots or any(slot.pool is not self.pool for slot in slots):
            return None
        length = max(slot.get_seq_length() + len(row.tokens) for slot, row in zip(slots, rows))
        if length > self.pool.max_len:
            return None  # the eager pass refuses it with the --max-len error
        return bucket_for(len(rows), max(len(row.tokens) for row in rows), length, self.pool.num_slots,
                          self.pool.max_len)

    @torch.inference_mode()
    def forward(self, slots: Sequence[Slot], rows: Sequence[BatchRow], bucket: Bucket) -> list[torch.Tensor]:
        """Logits (n_i, vocab) for each row's new tokens; each slot gains its n_i entries."""
        static = self._static(bucket)
        static.fill(self.kinds, self.pool, slots, rows, self.dtype)
        widths = [len(row.tokens) for row in rows]
        bases = [slot.get_seq_length() for slot in slots]
        try:
            self.pool.begin_planned_pass(list(slots), widths, static.plan)
            if not self.capture:
                self._run(static)
            elif static.graph is not None:
                static.graph.replay()
            elif not self._capture(static):
                self._run(static)  # not capturable: this pass and every later one eagerly
            else:
                static.graph.replay()
        except BaseException:
            for slot, base in zip(slots, bases):
                self.pool.lengths[slot.index] = base
            raise
        finally:
            self.pool.end_pass()
        out = self.logits[: bucket.rows * bucket.width].view(bucket.rows, bucket.width, -1)
        return [out[i, :n].clone() for i, n in enumerate(widths)]

    def capture_common(self, widths: Sequence[int] = START_WIDTHS, max_rows: int | None = None) -> int:
        """Run (and on CUDA capture) the bucket of every row count up to the pool's (and up to
        `max_rows`, the most rows a pass of this process batches: --max-batch, --draft-batch) and each of
        `widths`, at the shortest length, before any request: one real row of token 0 on a
        borrowed slot, the other rows padding. The slot is emptied and given back; the graphs
        replay any later pass of their bucket, since every input is copied into them. Returns the
        number of buckets made ready (0 with no free slot, or once capture has failed)."""
        slot = self.pool.allocate()
        if slot is None:
            return 0
        num_ready, rows = 0, 1
        try:
            most = min(self.pool.num_slots, max_rows or self.pool.num_slots)
            while rows <= _power_of_two_at_least(most):
                for width in widths:
                    bucket = bucket_for(rows, width, 1, self.pool.num_slots, self.pool.max_len)
                    if bucket is None or bucket.width != width or width > self.pool.max_len:
                        continue
                    row = BatchRow(tokens=[0] * width, positions=list(range(width)),
                                   visible=torch.ones(width, width, dtype=torch.bool).tril())
                    self.forward([slot], [row], bucket)
                    self.pool.lengths[slot.index] = 0
                    if self.capture_failed:
                        return num_ready
                    num_ready += 1
                rows *= 2
        finally:
            slot.free()
        return num_ready

    def _static(self, bucket: Bucket) -> _StaticPass:
        if bucket in self.passes:
            self.passes.move_to_end(bucket)
            return self.passes[bucket]
        static = _StaticPass(bucket, self.kinds, self.pool, self.dtype)
        while self.passes and (len(self.passes) >= MAX_GRAPHS
                               or sum(p.nbytes for p in self.passes.values()) + static.nbytes > MAX_STATIC_BYTES):
            self.passes.popitem(last=False)
        self.passes[bucket] = static
        return static

    def _run(self, static: _StaticPass) -> None:
        """The static pass: the model's own forward over the static tensors; logits to the buffer."""
        out = self.model(input_ids=static.input_ids, position_ids=static.position_ids, attention_mask=static.masks,
                         cache=self.pool.cache, use_cache=True)
        rows, width, vocab = out.logits.shape
        if self.logits is None:
            self.logits = torch.empty(MAX_TOKENS, vocab, dtype=out.logits.dtype, device=out.logits.device)
        self.logits[: rows * width].view(rows, width, vocab).copy_(out.logits)

    def _capture(self, static: _StaticPass) -> bool:
        """Warm up on a side stream (the real inputs: the passes write what the real one writes),
        then capture into the shared pool. False (and graphs off) if the forward cannot be captured."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, pool=self.memory_pool):
                self._run(static)
        except RuntimeError as error:
            # a failed capture can leave its side stream current (torch.cuda.graph's exit raises
            # before it restores the stream): every later pass must run where the others did
            torch.cuda.set_stream(stream)
            logging.warning("this model's pass cannot be captured as a CUDA graph (%s): passes run eagerly",
                            str(error).splitlines()[0])
            self.capture, self.capture_failed = False, True
            torch.cuda.synchronize()
            return False
        static.graph = graph
        self.num_captured += 1
        logging.debug("captured a CUDA graph of %d rows x %d tokens over %d columns", static.bucket.rows,
                      static.bucket.width, static.bucket.length)
        return True
