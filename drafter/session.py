"""What the draft engine keeps per request (DraftSession) and hands out per round (DraftBlock)."""
from __future__ import annotations

from dataclasses import dataclass, field

from drafter.outcomes import OutcomeBranch
from kvcache.slots import Slot
from protocol.prompt_lookup import NgramIndex


@dataclass
class DraftSession:
    """One request on the draft side. Invariant after every draft pass:
    cache length == len(tokens) - 1 (the last token is fed at the start of the next pass).
    Between a sync and the next pass the cache may be shorter; the pass feeds the gap.
    Agreement (protocol.messages.Agreement): every committed position from the prompt's end
    on is judged once, in order; `judged` is the first not yet reported."""

    tokens: list[int]  # committed tokens, then the draft model's own greedy continuation
    num_committed: int
    cache: Slot
    window: list[list[int]]
    draft_length: int  # trunk tokens the verifier asked for (0: keep the cache and agreement in step)
    judged: int = 0
    agreed: dict[int, int] = field(default_factory=dict)  # position -> bit, at or past `judged`
    num_passes: int = 0
    num_phrase_hits: int = 0
    num_phrase_tokens: int = 0
    lookup: NgramIndex | None = None  # prompt lookup over the committed text (protocol.prompt_lookup)
    # the speculation cache (drafter.speculation_cache): the draft's top tokens at each drafted
    # position, the outcome branches for the block on outcome_base, and the chain's entries then
    candidates: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    outcomes: list[OutcomeBranch] = field(default_factory=list)
    outcome_base: int | None = None
    outcome_chain: int = 0
    acceptance: float = 0.7  # running mean of the Agreement bits: the draft's per-token acceptance
    num_tree_passes: int = 0
    num_outcome_hits: int = 0

    @property
    def cache_length(self) -> int:
        return self.cache.get_seq_length()

    @property
    def num_drafted(self) -> int:
        return len(self.tokens) - self.num_committed


@dataclass(frozen=True)
class DraftBlock:
    trunk: list[int]
    branches: list[list[int]]
