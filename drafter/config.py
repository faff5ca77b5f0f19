"""The drafter's frozen configuration, built once in launch/ and passed down. Each knob's CLI
flag and help live here, once, in its field's metadata (launch.config builds the flags, the
config and a child's argv from them)."""
from __future__ import annotations

from dataclasses import dataclass

from protocol.knobs import knob


PRE_DRAFT_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class DrafterConfig:
    """Knobs of Ouroboros drafting (docs/architecture.md, "The algorithm"). Each error names the CLI flag to change.
    Defaults fit the built-in pair on a 2-core CPU, where every verified token costs target time
    (README, "What it does on this CPU"); on GPUs raise --branches and --gamma."""

    gamma: int = knob(8, "--gamma", "longest trunk drafted in one round: the verifier picks each round's length up "
                                    "to this (verifier.speculation)")
    window: int = knob(4, "--window", "W: lookahead window columns")
    ngram: int = knob(4, "--ngram", "N: n-gram size incl. key token; phrases hold N-1 tokens")
    pool_size: int = knob(20, "--pool-size", "G: phrases kept per key token")
    branches: int = knob(0, "--branches", "K: pool phrases attached after the trunk as branches")
    phrases_checked: int = knob(4, "--phrases-checked", "pool phrases verified inside one draft pass")
    seed_pool_from_text: bool = knob(True, "--no-text-phrases",
                                     "do not seed the phrase pool with n-grams of the prompt and output",
                                     inverted_by=True)
    lookup_tokens: int = knob(5, "--lookup-tokens", "prompt-lookup branch length (0 = no lookup branch)")
    lookup_ngram: int = knob(3, "--lookup-ngram", "longest n-gram prompt lookup matches")
    lookup_min_ngram: int = knob(2, "--lookup-min-ngram", "shortest n-gram prompt lookup matches")
    max_batch: int = knob(8, "--draft-batch", "requests drafted together in one batched draft pass")
    pre_drafts: str = knob("auto", "--pre-drafts",
                           "draft the next block while the verifier checks the current one: on; off (the processes "
                           "take turns: the drafter drafts only while the verifier waits, and each target pass takes "
                           "the drafter's cores too); auto: off where both processes share one CPU, else on")

    outcomes: int = knob(16, "--outcomes",
                         "speculation cache: verification outcomes (k trunk tokens accepted, then the target's own "
                         "token) whose next block is pre-drafted beside the draft's own while the verifier checks a "
                         "block (0 = none); only with pre-drafts on")

    record_rounds: str = knob("", "--record-rounds",
                              "append one JSON line per verdict to this file (where the speculation cache ranked "
                              "the outcome, the draft passes the round took): the input of python -m bench.simulate")

    def __post_init__(self) -> None:
        _require(self.gamma >= 1, f"--gamma must be >= 1, got {self.gamma}")
        _require(self.window >= 0, f"--window must be >= 0, got {self.window}")
        _require(self.ngram >= 2, f"--ngram must be >= 2, got {self.ngram}")
        _require(self.pool_size >= 1, f"--pool-size must be >= 1, got {self.pool_size}")
        _require(self.branches >= 0, f"--branches must be >= 0, got {self.branches}")
        _require(self.phrases_checked >= 0, f"--phrases-checked must be >= 0, got {self.phrases_checked}")
        _require(self.lookup_tokens >= 0, f"--lookup-tokens must be >= 0, got {self.lookup_tokens}")
        _require(1 <= self.lookup_min_ngram <= self.lookup_ngram,
                 f"need 1 <= --lookup-min-ngram ({self.lookup_min_ngram}) <= --lookup-ngram ({self.lookup_ngram})")
        _require(0 <= self.outcomes <= 64, f"--outcomes must be in 0..64, got {self.outcomes}")
        _require(self.max_batch >= 1, f"--draft-batch must be >= 1, got {self.max_batch}")
        _require(self.pre_drafts in PRE_DRAFT_MODES,
                 f"--pre-drafts must be one of {', '.join(PRE_DRAFT_MODES)}, got {self.pre_drafts!r}")

    @property
    def phrase_length(self) -> int:
        return self.ngram - 1


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
