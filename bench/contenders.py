"""The contenders `ouroboros bench` times: each runs one prompt and reports what it did."""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass

import torch

from launch import config as cfg

from drafter.engine import DraftEngine
from launch.reference import target_alone
from launch.sequential import engine_alone, generate
from launch.serve import LocalPipeline, add_serve_flags
from models.loading import for_engine, load_pair
from protocol.client import Client
from verifier.engine import TargetEngine
from verifier.sampling import SamplingParams


@dataclass
class Outcome:
    tokens: list[int]
    seconds: float
    num_passes: int | None = None  # target forward passes (speculative contenders only)
    num_drafted: int | None = None
    num_accepted: int | None = None
    # the pipeline's overlap: rounds that verified a draft, those whose draft was drafted ahead,
    # and the target's idle time before them (verifier.requests.RequestStats)
    num_draft_rounds: int | None = None
    num_predraft_hits: int = 0
    draft_wait_s: float = 0.0


class InProcess:
    """A contender in this process: the models are shared, the thread count is its own."""

    def __init__(self, name: str, shared: "Shared", threads: int) -> None:
        self.name, self.shared, self.threads = name, shared, threads

    def encode(self, prompt: str) -> list[int]:
        return self.shared.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def run(self, ids: list[int], max_new_tokens: int) -> Outcome:
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        outcome = self.decode(ids, max_new_tokens)
        outcome.seconds = time.perf_counter() - start
        return outcome

    def decode(self, ids: list[int], max_new_tokens: int) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TargetAlone(InProcess):
    def decode(self, ids, max_new_tokens):
        s = self.shared
        return Outcome(target_alone(s.target, ids, max_new_tokens, s.stops, s.sampling), 0.0)


class EngineAlone(InProcess):
    """Our target engine (packed weights, our caches and masks) with no drafts."""

    def decode(self, ids, max_new_tokens):
        s = self.shared
        return Outcome(engine_alone(s.target_engine(), ids, max_new_tokens, s.stops, s.sampling), 0.0)


class HFDecoding(InProcess):
    """HF assisted generation with the same draft, or HF prompt lookup (greedy only)."""

    @torch.inference_mode()
    def decode(self, ids, max_new_tokens):
        s = self.shared
        extra = {"assistant_model": s.hf_draft()} if self.name == "hf-assisted" else {"prompt_lookup_num_tokens": 10}
        out = s.target.generate(torch.tensor([ids], device=s.target.device), max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=s.stops, pad_token_id=0, **extra)
        return Outcome(out[0, len(ids) :].tolist(), 0.0)


class Sequential(InProcess):
    def decode(self, ids, max_new_tokens):
        s = self.shared
        result = generate(s.target_engine(), s.draft_engine(), ids, max_new_tokens, s.stops, sampling=s.sampling)
        m = result.metrics
        return Outcome(result.tokens, 0.0, int(m["rounds"]), int(m["drafted_tokens"]), int(m["trunk_accepted"]))


class Pipeline:
    """The two processes over ZeroMQ, one thread each, driven by the client library.
    `pipeline@DRAFT` runs it with another draft, so drafts meet head to head in one run."""

    def __init__(self, args: argparse.Namespace, shared: "Shared", name: str = "pipeline") -> None:
        serve_parser = argparse.ArgumentParser()
        add_serve_flags(serve_parser)
        serve_args = serve_parser.parse_args([])  # serve's defaults, then this run's models and knobs
        serve_args.__dict__.update({k: v for k, v in vars(args).items() if k in vars(serve_args)})
        serve_args.port, serve_args.threads_per_process = 0, max(1, args.threads // 2)
        serve_args.target_device = serve_args.draft_device = args.device
        if "@" in name:
            serve_args.draft = name.split("@", 1)[1]
        self.name, self.shared = name, shared
        self.local = LocalPipeline(serve_args)
        self.client = Client(self.local.start(), timeout=600)

    def encode(self, prompt: str) -> list[int]:
        return self.shared.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def run(self, ids: list[int], max_new_tokens: int) -> Outcome:
        s = self.shared.sampling
        params = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed) if s else {}
        start = time.perf_counter()
        done = self.client.generate(ids, max_new_tokens=max_new_tokens, **params)
        seconds = time.perf_counter() - start
        m = done.metrics
        trunk_accepted = round(m["acceptance_rate"] * m["drafted_tokens"])
        draft_rounds = int(m["rounds"] - m["target_only_rounds"])
        return Outcome(done.token_ids, seconds, int(m["rounds"]), int(m["drafted_tokens"]), trunk_accepted,
                       draft_rounds, round(m["predraft_hit_rate"] * draft_rounds),
                       m["mean_draft_wait_ms"] * draft_rounds / 1000)

    def close(self) -> None:
        self.client.close()
        self.local.stop()


class Shared:
    """Models loaded once for every in-process contender."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pair = load_pair(args.target, args.draft, args.device, args.device, args.dtype)
        self.target, self.tokenizer = self.pair.target, self.pair.tokenizer
        self.stops = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        self.sampling = (SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
                         if args.temperature else None)
        self._target_engine = None
        self._draft_engine = None
        self._hf_draft = None

    def _engine_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """The engines get their own copies, packed as the pipeline's are; HF's contenders keep
        the plain models."""
        return for_engine(copy.deepcopy(model), packed=not self.args.no_packed_weights)

    def target_engine(self):
        if self._target_engine is None:
            self._target_engine = TargetEngine(self._engine_copy(self.target),
                                               cuda_graphs=not self.args.no_cuda_graphs)
            if self._target_engine.graphs is not None:  # as the verifier does at start-up
                self._target_engine.graphs.capture_common(max_rows=cfg.verifier_config(self.args).max_batch)
        return self._target_engine

    def draft_engine(self):
        """One drafter across prompts, so its phrase pool warms up as the pipeline's does."""
        if self._draft_engine is None:
            self._draft_engine = DraftEngine(self._engine_copy(self.pair.draft), cfg.drafter_config(self.args),
                                             cuda_graphs=not self.args.no_cuda_graphs)
            if self._draft_engine.graphs is not None:
                self._draft_engine.graphs.capture_common(max_rows=self._draft_engine.config.max_batch)
        return self._draft_engine

    def hf_draft(self) -> torch.nn.Module:
        """The same draft for HF: a reduced output vocabulary becomes a full one whose other
        tokens get a -1e4 bias, so HF sees exactly the draft's argmax."""
        if self._hf_draft is None:
            draft = self.pair.draft
            ids = getattr(draft, "draft_token_ids", None)
            if ids is not None:
                draft = copy.deepcopy(draft)
                vocab = self.target.config.vocab_size
                head = torch.nn.Linear(draft.lm_head.in_features, vocab, bias=True)
                with torch.no_grad():
                    head.weight.zero_()
                    head.weight[ids] = self.pair.draft.lm_head.weight
                    head.bias.fill_(-1e4)
                    head.bias[ids] = 0.0
                draft.lm_head = head
                del draft.draft_token_ids
            draft.generation_config.num_assistant_tokens = self.args.gamma
            self._hf_draft = draft
        return self._hf_draft


def build_contenders(args: argparse.Namespace, names: list[str]) -> tuple[list, list[str]]:
    shared = Shared(args)
    notes: list[str] = []
    contenders: list = []
    for name in names:
        if name.startswith("hf-") and shared.sampling is not None:
            notes.append(f"{name} skipped: HF's sampling is not keyed, so identity cannot be checked")
            continue
        if name.endswith("-1thread") and torch.cuda.is_available():
            notes.append(f"{name} skipped on GPUs")
            continue
        if name.split("@", 1)[0] == "pipeline":
            contenders.append(Pipeline(args, shared, name))
            continue
        kind = {"target": TargetAlone, "target-1thread": TargetAlone, "target-engine": EngineAlone,
                "hf-assisted": HFDecoding,
                "hf-prompt-lookup": HFDecoding, "sequential": Sequential, "sequential-1thread": Sequential}[name]
        contenders.append(kind(name, shared, 1 if name.endswith("-1thread") else args.threads))
        if name in ("target-engine", "sequential", "sequential-1thread"):  # made (and on CUDA captured) first
            shared.target_engine()
        if kind is Sequential:
            shared.draft_engine()
    return contenders, notes
