"""The verifier's frozen configuration, built once in launch/ and passed down."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VerifierConfig:
    max_draft_tokens: int = 256  # trunk + branch tokens verified in one pass (--max-draft-tokens)
    draft_timeout_s: float = 2.0  # wait for a valid draft before decoding alone (--draft-timeout)
    max_sessions: int = 16  # requests decoded at once (--max-sessions)
    max_batch: int = 8  # ready requests verified together in one target pass (--max-batch)
    max_queue: int = 64  # requests waiting beyond those; more get a "busy" Error at once (--max-queue)
    is_width_fitted: bool = True  # cut batched trees to the width that pays (--verify-all-drafts: off)
    stop_token_ids: tuple[int, ...] = ()  # always end a request (the tokenizer's EOS)
    # a round that comes without a draft still verifies a prompt-lookup branch, found by the
    # verifier in the committed text (--own-lookup-tokens, 0 = none)
    own_lookup_tokens: int = 5
    lookup_ngram: int = 3
    lookup_min_ngram: int = 2

    def __post_init__(self) -> None:
        if self.max_draft_tokens < 1:
            raise ValueError(f"--max-draft-tokens must be >= 1, got {self.max_draft_tokens}")
        if not self.draft_timeout_s > 0:
            raise ValueError(f"--draft-timeout must be > 0 seconds, got {self.draft_timeout_s}")
        if self.max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.own_lookup_tokens < 0:
            raise ValueError(f"--own-lookup-tokens must be >= 0, got {self.own_lookup_tokens}")
        if self.max_sessions < 1:
            raise ValueError(f"--max-sessions must be >= 1, got {self.max_sessions}")
