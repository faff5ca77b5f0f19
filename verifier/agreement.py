"""A warning for a pair that cannot work: a drafter whose first verified tokens are almost never
the target's (a draft made for another model, or a tokenizer that differs in a way the
fingerprint check did not see). Bookkeeping only."""
from __future__ import annotations

import logging

log = logging.getLogger("ouroboros.verifier")

MIN_EVIDENCE = 48  # verified draft tokens before judging
NEAR_ZERO = 0.02  # accepted / verified at or below this: warn


class AgreementWatch:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new drafter: judge it afresh."""
        self.num_verified = 0
        self.num_accepted = 0
        self.is_judged = False

    def record(self, num_verified: int, num_accepted: int) -> bool:
        """Count one verdict's trunk. Judged once, at MIN_EVIDENCE verified tokens: True (and a
        warning logged) when the draft's agreement is near zero."""
        if self.is_judged:
            return False
        self.num_verified += num_verified
        self.num_accepted += num_accepted
        if self.num_verified < MIN_EVIDENCE:
            return False
        self.is_judged = True
        if self.num_accepted / self.num_verified > NEAR_ZERO:
            return False
        log.warning("the draft agreed with the target on %d of its first %d verified tokens: check that the pair "
                    "shares a tokenizer and that the draft was made for this target",
                    self.num_accepted, self.num_verified)
        return True
