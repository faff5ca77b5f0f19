"""`ouroboros bench --pass-costs`: what one forward pass costs, by its width and its rows.

This curve decides how wide a tree pays: a drafted token must be accepted often enough to pay
for its place in the pass. Both models, through our engine (packed weights, our caches and
masks), on CUDA also through its CUDA graphs (kvcache.graphs), and through HF's plain forward,
on the same thread count; each figure the median of several timed passes after a warm-up."""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from kvcache.attention import attention_kinds, forward_one, new_cache, prefill
from kvcache.batch import BatchRow, batched_forward
from kvcache.graphs import GraphedPasses
from kvcache.slots import SlotPool
from models.loading import for_engine, load_pair

CONTEXT = 150  # cached tokens before every timed pass (the prefill has none)
TOKENS = (1, 2, 4, 8, 16, 32)
ROWS = (1, 2, 4, 8)
PREFILL = 100
WARMUP, REPEATS = 2, 7


def _median_ms(run: Callable[[], None], undo: Callable[[], None], device: torch.device | None = None) -> float:
    """On CUDA each pass is timed to the end of its kernels (synchronize), not to its launch."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    times = []
    for i in range(WARMUP + REPEATS):
        sync()
        start = time.perf_counter()
        run()
        sync()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
        undo()
    return 1000 * statistics.median(times)


VOCAB_SPAN = 4000  # token ids are drawn from the first rows (within any model's vocabulary)


def _ids(count: int, offset: int = 0, vocab: int = VOCAB_SPAN) -> list[int]:
    return [(offset + 7 * i) % min(vocab, VOCAB_SPAN) for i in range(count)]


class _Passes:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.vocab = int(model.get_input_embeddings().num_embeddings)
        self.device = next(model.parameters()).device

    def time(self, run: Callable[[], None], undo: Callable[[], None]) -> float:
        return _median_ms(run, undo, self.device)

    def ids(self, count: int, offset: int = 0) -> list[int]:
        return _ids(count, offset, self.vocab)


class EnginePasses(_Passes):
    """Passes through kvcache.attention / kvcache.batch on KV slots, as both engines run them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.kinds = attention_kinds(model.config)
        parameter = next(model.parameters())
        self.slots = SlotPool(model.config, max(ROWS) + 1, CONTEXT + max(TOKENS), parameter.dtype, parameter.device)

    def _cache(self, tokens: list[int]):
        cache = new_cache(self.slots)
        prefill(self.model, self.kinds, cache, tokens)
        return cache

    def tokens(self, count: int) -> float:
        cache = self._cache(self.ids(CONTEXT))
        causal = torch.ones(count, count, dtype=torch.bool, device=self.device).tril()
        positions = list(range(CONTEXT, CONTEXT + count))
        return self.time(lambda: forward_one(self.model, self.kinds, cache, self.ids(count, 1), positions, causal),
                          lambda: cache.keep(list(range(CONTEXT))))

    def rows(self, count: int) -> float:
        caches = [self._cache(self.ids(CONTEXT, r)) for r in range(count)]
        rows = [BatchRow([self.ids(1, r)[0]], [CONTEXT], torch.ones(1, 1, dtype=torch.bool, device=self.device)) for r in range(count)]

        def undo() -> None:
            for cache in caches:
                cache.keep(list(range(CONTEXT)))

        return self.time(lambda: batched_forward(self.model, self.kinds, caches, rows), undo)

    def prefill(self) -> float:
        return self.time(lambda: self._cache(self.ids(PREFILL)), lambda: None)


class GraphPasses(EnginePasses):
    """The target engine's verification pass on CUDA: bucketed static shapes replayed as CUDA
    graphs (kvcache.graphs), each captured in the warm-up."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.graphs = GraphedPasses(model, self.kinds, self.slots)

    def _graphed(self, caches: list, rows: list) -> Callable[[], None]:
        bucket = self.graphs.bucket(caches, rows)
        return lambda: self.graphs.forward(caches, rows, bucket)

    def tokens(self, count: int) -> float:
        cache = self._cache(self.ids(CONTEXT))
        row = BatchRow(self.ids(count, 1), list(range(CONTEXT, CONTEXT + count)), torch.ones(count, count).bool().tril())
        return self.time(self._graphed([cache], [row]), lambda: cache.keep(list(range(CONTEXT))))

    def rows(self, count: int) -> float:
        caches = [self._cache(self.ids(CONTEXT, r)) for r in range(count)]
        rows = [BatchRow([self.ids(1, r)[0]], [CONTEXT], torch.ones(1, 1, dtype=torch.bool)) for r in range(count)]

        def undo() -> None:
            for cache in caches:
                cache.keep(list(range(CONTEXT)))

        return self.time(self._graphed(caches, rows), undo)


class HFPasses(_Passes):
    """HF's plain forward with its own DynamicCache and masks (full-length layers, so a sliding
    window's pass can be undone with crop; HF's mask still applies the window)."""

    @torch.inference_mode()
    def _cache(self, batch: list[list[int]]) -> DynamicCache:
        cache = DynamicCache()
        self.model(input_ids=torch.tensor(batch, device=self.device), cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    @torch.inference_mode()
    def _step(self, cache: DynamicCache, batch: list[list[int]]) -> None:
        self.model(input_ids=torch.tensor(batch, device=self.device), cache=cache, use_cache=True)

    def tokens(self, count: int) -> float:
        cache = self._cache([self.ids(CONTEXT)])
        return self.time(lambda: self._step(cache, [self.ids(count, 1)]), lambda: cache.crop(-count))

    def rows(self, count: int) -> float:
        cache = self._cache([self.ids(CONTEXT, r) for r in range(count)])
        batch = [[self.ids(1, r)[0]] for r in range(count)]
        return self.time(lambda: self._step(cache, batch), lambda: cache.crop(-1))

    def prefill(self) -> float:
        return self.time(lambda: self._cache([self.ids(PREFILL)]), lambda: None)


def measure(models: dict[str, torch.nn.Module], packed: bool, progress=None) -> list[dict]:
    """Every pass of the curve for each model, via our engine and via HF."""
    passes = []
    for name, model in models.items():
        runners = [("engine", lambda: EnginePasses(for_engine(copy.deepcopy(model), packed))),
                   ("hf", lambda: HFPasses(model))]
        if next(model.parameters()).device.type == "cuda":  # the verification pass as CUDA graphs
            runners.insert(1, ("graphs", lambda: GraphPasses(model)))
        for via, make_runner in runners:
            runner = make_runner()
            shapes = [(1, t, CONTEXT) for t in TOKENS] + [(r, 1, CONTEXT) for r in ROWS if r > 1]
            for rows, tokens, context in shapes:
                ms = runner.tokens(tokens) if rows == 1 else runner.rows(rows)
                passes.append({"model": name, "via": via, "rows": rows, "tokens": tokens, "context": context,
                               "ms": ms})
            if via != "graphs":  # a prefill is never graphed: it runs as via engine
                passes.append({"model": name, "via": via, "rows": 1, "tokens": PREFILL, "context": 0,
                               "ms": runner.prefill()})
            if progress is not None:
                progress(f"{name} via {via} done")
    return passes


def format_table(passes: list[dict]) -> str:
    """Rows: model/via; columns: every shape, with the ratio to the 1-token pass."""
    width = max([8] + [len(p["model"]) + 2 for p in passes])
    lines = [f"{'model':{width}}{'via':8}{'shape':>18}{'ms':>9}{'x 1-token':>11}"]
    one = {(p["model"], p["via"]): p["ms"] for p in passes if p["rows"] == 1 and p["tokens"] == 1 and p["context"]}
    for p in passes:
        shape = f"prefill {p['tokens']}" if not p["context"] else f"{p['rows']} row x {p['tokens']} tok"
        ratio = p["ms"] / one[(p["model"], p["via"])]
        lines.append(f"{p['model']:{width}}{p['via']:8}{shape:>18}{p['ms']:>9.1f}{ratio:>11.2f}")
    return "\n".join(lines)


def run_pass_costs(args: argparse.Namespace) -> int:
    threads = max(1, args.threads // 2)  # what each process of the pipeline gets
    torch.set_num_threads(threads)
    pair = load_pair(args.target, args.draft, args.device, args.device, dtype=args.dtype)
    device = str(next(pair.target.parameters()).device)
    passes = measure({"target": pair.target, "draft": pair.draft}, not args.no_packed_weights,
                     progress=lambda text: print(f"pass costs: {text}", file=sys.stderr, flush=True))
    print(f"pass costs on {device}, {threads} thread(s), {CONTEXT}-token context, median of {REPEATS}:")
    print(format_table(passes))
    if args.json:
        report = {"device": device, "threads": threads, "context": CONTEXT, "passes": passes}
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0
