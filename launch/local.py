"""In-process runners: the sequential engines, and the target alone, on one model pair."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from launch.models import ModelPair, load_pair
from launch.sequential import generate
from verifier.engine import TargetEngine


@dataclass
class InProcessPipeline:
    pair: ModelPair
    target: TargetEngine
    drafter: DraftEngine

    @classmethod
    def load(cls, target: str, draft: str, drafter_config: DrafterConfig, dtype: str = "float32") -> "InProcessPipeline":
        pair = load_pair(target, draft, dtype=dtype)
        return cls(pair, TargetEngine(pair.target), DraftEngine(pair.draft, drafter_config))

    def encode(self, prompt: str) -> list[int]:
        ids = self.pair.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("the prompt is empty")
        return list(ids)

    @property
    def stop_token_ids(self) -> list[int]:
        eos = self.pair.tokenizer.eos_token_id
        return [] if eos is None else [int(eos)]

    def complete(self, prompt: str, max_new_tokens: int) -> tuple[str, list[int], dict]:
        result = generate(self.target, self.drafter, self.encode(prompt), max_new_tokens, self.stop_token_ids)
        return self.pair.tokenizer.decode(result.tokens), result.tokens, result.metrics

    @torch.inference_mode()
    def target_only(self, prompt: str, max_new_tokens: int) -> tuple[str, list[int], dict]:
        """HF greedy generate with the target alone: the lossless reference."""
        ids = torch.tensor([self.encode(prompt)], device=self.target.device)
        out = self.pair.target.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_token_ids or None,
            pad_token_id=self.pair.tokenizer.pad_token_id or 0,
        )
        tokens = out[0, ids.shape[1] :].tolist()
        return self.pair.tokenizer.decode(tokens), tokens, {"rounds": len(tokens)}
