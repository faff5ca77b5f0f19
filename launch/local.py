"""In-process runners: the sequential engines, and the target alone, on one model pair."""
from __future__ import annotations

from dataclasses import dataclass

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from models.loading import ModelPair, for_engine, load_model, load_pair, load_tokenizer
from launch.reference import target_alone
from launch.sequential import generate
from verifier.sampling import SamplingParams
from verifier.engine import TargetEngine


@dataclass
class InProcessPipeline:
    pair: ModelPair
    target: TargetEngine
    drafter: DraftEngine | None  # None: the target alone (the reference needs no draft)

    @classmethod
    def load(cls, target: str, draft: str | None, drafter_config: DrafterConfig, dtype: str = "float32",
             packed: bool = True) -> "InProcessPipeline":
        """Both engines on one pair; the target alone (HF's own decoding, unpacked) with no draft."""
        if draft is None:
            model = load_model(target, dtype=dtype)
            return cls(ModelPair(model, None, load_tokenizer(target)), TargetEngine(model), None)
        pair = load_pair(target, draft, dtype=dtype)
        for_engine(pair.target, packed)
        for_engine(pair.draft, packed)
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
        if self.drafter is None:
            raise ValueError("this pipeline was loaded without a draft (--target-only)")
        ids = self.encode(prompt)
        result = generate(self.target, self.drafter, ids, max_new_tokens, self.stop_token_ids, sampling=sampling)
        return self.pair.tokenizer.decode(result.tokens, skip_special_tokens=True), result.tokens, result.metrics

    def target_only(self, prompt: str, max_new_tokens: int, sampling: SamplingParams | None = None,
                    ) -> tuple[str, list[int], dict]:
        """The target alone (HF greedy generate, or the keyed sampler): the lossless reference."""
        ids = self.target.check_prompt(self.encode(prompt), max_new_tokens)  # the context limit, as admission
        tokens = target_alone(self.pair.target, ids, max_new_tokens, self.stop_token_ids, sampling)
        return self.pair.tokenizer.decode(tokens, skip_special_tokens=True), tokens, {"rounds": len(tokens)}
