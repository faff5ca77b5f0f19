"""The verifier's frozen configuration, built once in launch/ and passed down. Each knob's CLI
flag and help live here, once (protocol.knobs)."""
from __future__ import annotations

from dataclasses import dataclass

from protocol.knobs import knob


@dataclass(frozen=True)
class VerifierConfig:
    max_draft_tokens: int = knob(256, "--max-draft-tokens", "most trunk + branch tokens verified in one target pass")
    draft_timeout_s: float = knob(2.0, "--draft-timeout", "seconds to wait for a valid draft before a round is "
                                  "decoded by the target alone")
    max_sessions: int = knob(16, "--max-sessions", "requests decoded at once (sizes the KV slots)")
    max_batch: int = knob(8, "--max-batch", "ready requests verified together in one batched target pass")
    max_queue: int = knob(64, "--max-queue", "requests waiting beyond --max-sessions; more are refused as busy")
    stop_token_ids: tuple[int, ...] = ()  # always end a request (the tokenizer's EOS; no flag)
    own_lookup_tokens: int = knob(5, "--own-lookup-tokens", "prompt-lookup branch the verifier finds itself, at the "
                                  "root beside any draft's trunk (0 = none)")
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
