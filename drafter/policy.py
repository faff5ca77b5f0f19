"""How many tokens the drafter drafts and sends each round: the one owner of draft length on the
drafter side (gamma, adaptivity, the agreement gate, the budget, --max-trunk). Pure rules over a
request's measured state; the engine runs the passes, the verifier's plan may still cut a trunk."""
from __future__ import annotations

from dataclasses import dataclass

from drafter.config import DrafterConfig

AGREEMENT_SMOOTHING = 0.1  # weight of the newest verdict in DraftState.agreement


@dataclass
class DraftState:
    """What the policy has measured for one request."""

    draft_length: int  # tokens to draft per round now (adaptive, see DraftPolicy.adapt)
    agreement: float = 1.0  # running rate at which the draft's first token is the target's


class DraftPolicy:
    def __init__(self, config: DrafterConfig) -> None:
        self.config = config

    def new_state(self) -> DraftState:
        return DraftState(draft_length=self.config.gamma)

    def is_gated(self, state: DraftState) -> bool:
        """Send no trunk while the draft disagrees with the target too often for its tokens to
        pay for their verification (--min-agreement); it keeps drafting and being measured, and
        the round still carries the prompt-lookup and pool branches."""
        return state.agreement < self.config.min_agreement

    def goal(self, state: DraftState, budget: int | None) -> int:
        """Draft tokens wanted for one round with `budget` new tokens left before the bonus.
        Gated, one: the draft's guess at the target's next token, to measure and pre-draft on."""
        if self.is_gated(state):
            return 1
        return state.draft_length if budget is None else max(1, min(state.draft_length, budget))

    def trunk_cap(self, state: DraftState, budget: int | None) -> int:
        """Most trunk tokens to send: none while gated, else --max-trunk within the budget."""
        if self.is_gated(state):
            return 0
        return max(0, min(self.config.max_trunk, budget if budget is not None else self.config.max_trunk))

    def adapt(self, state: DraftState, num_verified: int, num_accepted: int) -> None:
        """Adaptive draft length, from verified tokens only: a trunk the verifier cut (pass width,
        budget) says nothing about the tokens it did not check. All verified tokens accepted
        grows the next draft by 2 (up to gamma); a rejection shrinks it to one more than was
        accepted (at least min_gamma). On a CPU every verified token costs target time, so
        drafts follow the evidence."""
        if not self.config.adaptive or num_verified == 0:
            return
        if num_accepted >= num_verified:
            state.draft_length = min(self.config.gamma, state.draft_length + 2)
        else:
            state.draft_length = max(self.config.min_gamma, num_accepted + 1)

    def observe_first_token(self, state: DraftState, is_agreed: bool) -> None:
        """Every verdict: did the draft's first token equal the target's? (sent or not)."""
        state.agreement += AGREEMENT_SMOOTHING * (float(is_agreed) - state.agreement)
