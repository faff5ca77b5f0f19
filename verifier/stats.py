"""The verifier's counters since it started, answered to a StatusQuery (the HTTP door's
/metrics and /health read them). Plain numbers: no tensors, no sockets."""
from __future__ import annotations

from dataclasses import dataclass, field

from protocol.messages import Status


@dataclass
class ServerStats:
    num_drafter_handshakes: int = 0
    target_alone_s: float = 0.0
    num_rounds: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_by_position: list[int] = field(default_factory=list)
    generation_tokens: int = 0
    num_predraft_hits: int = 0
    num_predraft_misses: int = 0
    draft_wait_s: float = 0.0

    def record_round(self, num_trunk_verified: int, num_trunk_accepted: int, is_predraft: bool | None = False,
                     wait_s: float = 0.0) -> None:
        """One request's round. Like vLLM's counters: a draft is a round that verified drafted
        tokens; accepted tokens are the drafted ones the target kept (the trunk's prefix). Of
        those, a hit's draft was drafted ahead (ready when the verdict came); `wait_s` is how long
        the target stood idle for it. is_predraft None: not the drafter's (vLLM's door sent the
        prompt lookup), neither a hit nor a miss."""
        self.num_rounds += 1
        if num_trunk_verified == 0:
            return
        self.num_predraft_hits += int(is_predraft is True)
        self.num_predraft_misses += int(is_predraft is False)
        self.draft_wait_s += wait_s
        self.num_drafts += 1
        self.num_draft_tokens += num_trunk_verified
        self.num_accepted_tokens += num_trunk_accepted
        if len(self.accepted_by_position) < num_trunk_verified:
            self.accepted_by_position.extend([0] * (num_trunk_verified - len(self.accepted_by_position)))
        for position in range(num_trunk_accepted):
            self.accepted_by_position[position] += 1

    def record_pass(self, seconds: float, is_drafter_absent: bool) -> None:
        if is_drafter_absent:
            self.target_alone_s += seconds

    def as_status(self, request_id: str, running: int, queued: int, config, is_drafter_present: bool) -> Status:
        return Status(request_id=request_id, running=running, queued=queued, max_sessions=config.max_sessions,
                      max_queue=config.max_queue, is_drafter_present=is_drafter_present,
                      num_drafter_handshakes=self.num_drafter_handshakes, target_alone_s=self.target_alone_s,
                      num_rounds=self.num_rounds, num_drafts=self.num_drafts, num_draft_tokens=self.num_draft_tokens,
                      num_accepted_tokens=self.num_accepted_tokens,
                      accepted_by_position=list(self.accepted_by_position), generation_tokens=self.generation_tokens,
                      num_predraft_hits=self.num_predraft_hits, num_predraft_misses=self.num_predraft_misses,
                      draft_wait_s=self.draft_wait_s)
