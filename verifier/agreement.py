"""A warning for a pair that cannot work: a drafter whose first verified tokens are almost never
the target's (a draft made for another model, or a tokenizer that differs in a way the
fingerprint check did not see). Bookkeeping only."""
from __future__ import annotations

import logging

log = logging.getLogger("ouroboros.verifier")

MIN_EVIDENCE = 48  # verified trunks before judging
NEAR_ZERO = 0.05  # first tokens accepted / trunks verified at or below this: warn


class AgreementWatch:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new drafter: judge it afresh."""
        self.num_verified = 0
        self.num_accepted = 0
        self.is_judged = False

    def record(self, num_verified: int, num_accepted: int) -> bool:
        """Count one verdict's trunk by its first token: a weak draft's long trunks are mostly
        rejected past their first token, which would drown a working draft's rate (0.21 at the
        first token reads as 0.03 over trunks of 8), while a pair that cannot work misses the
        first token too. Judged once, at MIN_EVIDENCE verified trunks: True (and a warning
        logged) when the first tokens are almost never the target's."""
        if self.is_judged or num_verified == 0:
            return False
        self.num_verified += 1
        self.num_accepted += int(num_accepted > 0)
        if self.num_verified < MIN_EVIDENCE:
            return False
        self.is_judged = True
        if self.num_accepted / self.num_verified > NEAR_ZERO:
            return False
        log.warning("the draft's first token agreed with the target in %d of its first %d verified trunks: check "
                    "that the pair shares a tokenizer and that the draft was made for this target",
                    self.num_accepted, self.num_verified)
        return True
