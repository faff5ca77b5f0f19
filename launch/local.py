"""In-process runners: the sequential engines, and the target alone, on one model pair."""
from __future__ import annotations

from dataclasses import dataclass

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from launch.models import ModelPair, load_pair
from launch.reference import target_alone
from launch.sequential import generate
from verifier.sampling import SamplingParams
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

    def complete(self, prompt: str, max_new_tokens: int, sampling: SamplingParams | None = None,
                 ) -> tuple[str, list[int], dict]:
        ids = self.encode(prompt)
        result = generate(self.target, self.drafter, ids, max_new_tokens, self.stop_token_ids, sampling=sampling)
        return self.pair.tokenizer.decode(result.tokens), result.tokens, result.metrics

    def target_only(self, prompt: str, max_new_tokens: int, sampling: SamplingParams | None = None,
                    ) -> tuple[str, list[int], dict]:
        """The target alone (HF greedy generate, or the keyed sampler): the lossless reference."""
        tokens = target_alone(self.pair.target, self.encode(prompt), max_new_tokens, self.stop_token_ids, sampling)
        return self.pair.tokenizer.decode(tokens), tokens, {"rounds": len(tokens)}
