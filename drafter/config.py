"""The drafter's frozen configuration, built once in launch/ and passed down."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DrafterConfig:
    """Knobs of Ouroboros drafting (design.md §4). Each error names the CLI flag to change."""

    gamma: int = 8  # draft tokens the draft model must produce per round (--gamma)
    window: int = 4  # W: lookahead window columns (--window)
    ngram: int = 4  # N: n-gram size incl. key token; phrases hold N-1 tokens (--ngram)
    pool_size: int = 20  # G: phrases kept per key token (--pool-size)
    # Defaults fit the built-in pair on a 2-core CPU, where every verified token costs target time
    # (README, "What it does on this CPU"); on GPUs raise --branches and lower --min-agreement.
    branches: int = 0  # K: pool phrases attached after the trunk as branches (--branches)
    phrases_checked: int = 4  # pool phrases verified inside one draft pass (--phrases-checked)
    max_trunk: int = 64  # hard cap on trunk length sent in one round (--max-trunk)
    seed_pool_from_text: bool = True  # prompt/committed text n-grams feed the pool (--no-text-phrases)
    adaptive: bool = True  # draft length follows recent acceptance within [min_gamma, gamma] (--fixed-gamma)
    min_gamma: int = 1  # shortest adaptive draft (--min-gamma)
    lookup_tokens: int = 5  # prompt-lookup branch length, 0 = none (--lookup-tokens)
    lookup_ngram: int = 3  # longest suffix n-gram prompt lookup matches (--lookup-ngram)
    lookup_min_ngram: int = 2  # shortest one (--lookup-min-ngram)
    min_agreement: float = 0.4  # send no trunk while the draft's running agreement is lower (--min-agreement)
    max_batch: int = 8  # requests drafted together in one batched draft pass (--draft-batch)

    def __post_init__(self) -> None:
        _require(self.gamma >= 1, f"--gamma must be >= 1, got {self.gamma}")
        _require(self.window >= 0, f"--window must be >= 0, got {self.window}")
        _require(self.ngram >= 2, f"--ngram must be >= 2, got {self.ngram}")
        _require(self.pool_size >= 1, f"--pool-size must be >= 1, got {self.pool_size}")
        _require(self.branches >= 0, f"--branches must be >= 0, got {self.branches}")
        _require(self.phrases_checked >= 0, f"--phrases-checked must be >= 0, got {self.phrases_checked}")
        _require(1 <= self.min_gamma <= self.gamma, f"--min-gamma must be within 1..--gamma, got {self.min_gamma}")
        _require(0.0 <= self.min_agreement <= 1.0, f"--min-agreement must be within 0..1, got {self.min_agreement}")
        _require(self.lookup_tokens >= 0, f"--lookup-tokens must be >= 0, got {self.lookup_tokens}")
        _require(1 <= self.lookup_min_ngram <= self.lookup_ngram,
                 f"need 1 <= --lookup-min-ngram ({self.lookup_min_ngram}) <= --lookup-ngram ({self.lookup_ngram})")
        _require(self.max_batch >= 1, f"--draft-batch must be >= 1, got {self.max_batch}")
        _require(self.max_trunk >= self.gamma, f"--max-trunk ({self.max_trunk}) must be >= --gamma ({self.gamma})")

    @property
    def phrase_length(self) -> int:
        return self.ngram - 1


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
