"""Per-request bookkeeping on the verifier: committed text, pending drafts, stats, text deltas."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.messages import Draft
from protocol.rules import draft_budget, is_usable_at
from verifier.detokenize import IncrementalText
from verifier.engine import TargetSession, VerifyResult
from verifier.pass_cost import cut_draft
from verifier.sampling import SamplingParams

MAX_PENDING_DRAFTS = 4


@dataclass
class RequestStats:
    num_rounds: int = 0
    num_drafted: int = 0
    num_trunk_accepted: int = 0
    num_accepted: int = 0
    num_branch_hits: int = 0
    num_target_only_rounds: int = 0
    num_stale_drafts: int = 0
    num_predrafts_used: int = 0
    draft_wait_s: float = 0.0  # the target's idle time before rounds that verified a draft

    def record(self, trunk_len: int, result: VerifyResult, is_predraft: bool, has_draft: bool = True,
               wait_s: float = 0.0) -> None:
        self.num_rounds += 1
        self.draft_wait_s += wait_s if trunk_len else 0.0
        self.num_drafted += trunk_len
        self.num_trunk_accepted += result.num_trunk_accepted
        self.num_accepted += result.num_accepted
        self.num_branch_hits += int(result.num_branch_accepted > 0)
        self.num_target_only_rounds += int(not has_draft)  # no draft came: the target alone
        self.num_predrafts_used += int(is_predraft)

    def as_metrics(self, num_new: int) -> dict[str, float]:
        num_draft_rounds = self.num_rounds - self.num_target_only_rounds
        return {
            "rounds": float(self.num_rounds),
            "tokens_per_round": num_new / max(self.num_rounds, 1),
            "drafted_tokens": float(self.num_drafted),
            "accepted_tokens": float(self.num_accepted),
            "acceptance_rate": self.num_trunk_accepted / self.num_drafted if self.num_drafted else 0.0,
            "branch_hits": float(self.num_branch_hits),
            "target_only_rounds": float(self.num_target_only_rounds),
            "stale_drafts": float(self.num_stale_drafts),
            "predrafts_used": float(self.num_predrafts_used),
            # rounds whose draft was drafted ahead (ready when the verdict came, the chain's or the
            # speculation cache's), of those that verified one, and the mean wait for a draft
            "predraft_hit_rate": self.num_predrafts_used / num_draft_rounds if num_draft_rounds else 0.0,
            "mean_draft_wait_ms": 1000 * self.draft_wait_s / num_draft_rounds if num_draft_rounds else 0.0,
        }


@dataclass(frozen=True)
class RoundPlan:
    """What one round of a request verifies: a draft (or none) cut to the tokens left, and the
    verifier's own prompt-lookup continuation at the root beside the trunk (verifier.tree)."""

    trunk: list[int]
    branches: list[list[int]]
    is_predraft: bool
    has_draft: bool
    lookup: tuple[int, ...] = ()

    @property
    def num_draft_tokens(self) -> int:
        return len(self.lookup) + len(self.trunk) + sum(len(branch) for branch in self.branches)

    def cut(self, num_tokens: int) -> RoundPlan:
        """The first `num_tokens` tokens: the lookup first (a match in the text is the likeliest
        guess), then the draft (verifier.pass_cost.cut_draft)."""
        lookup = self.lookup[: max(num_tokens, 0)]
        room = num_tokens - len(lookup)
        trunk, branches = cut_draft(self.trunk, self.branches, room)
        return RoundPlan(trunk, branches, self.is_predraft, self.has_draft, lookup)


@dataclass
class ServerRequest:
    request_id: str
    client: bytes  # ROUTER identity of the client
    session: TargetSession
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    is_stream: bool
    sampling: SamplingParams | None = None  # None = greedy
    stop_strings: tuple[str, ...] = ()  # the text ends before the first one; see cut_at_stop
    started: float = field(default_factory=time.monotonic)
    waiting_since: float = field(default_factory=time.monotonic)
    drafts: dict[int, Draft] = field(default_factory=dict)  # base length -> draft
    num_output: int = 0  # the new tokens the client gets: session.tokens after the prompt, up to a stop
    text: IncrementalText | None = None  # the new tokens' client text (set at admission)
    chars_sent: int = 0
    chars_checked: int = 0  # text searched for stop strings
    text_limit: int | None = None  # the text is cut here (a stop string begins)
    unsent: list[int] = field(default_factory=list)  # tokens kept back until streamed
    stats: RequestStats = field(default_factory=RequestStats)
    draft_length: int = 0  # what the drafter was last asked for (Open/Verdict.draft_length; 0: none)
    may_come_ahead: bool = False  # the round its draft was asked after verified a trunk: it may be drafted ahead
    is_on_drafter: bool = False  # the drafter was told of it (Open): admitted in a burst, not yet
    round_wait_s: float = 0.0  # from the end of its last round (or admission) to this round's pass

    def plan_round(self, own_lookup: Callable[[list[int]], list[int]] | None = None,
                   max_draft_tokens: int = 1 << 30) -> RoundPlan:
        """The draft that fits now (see take_draft), its trunk cut to the length asked for
        (a pre-draft may be longer) and so no token is drafted past the end, past
        --max-draft-tokens or past the context. `own_lookup` (the verifier's prompt lookup on the
        committed text) adds a branch at the root: a round without a draft need not be a
        one-token round, and one whose trunk fails at its first token still has a path."""
        draft = self.take_draft()
        trunk, branches, is_predraft = draft or ([], [], False)
        budget = draft_budget(self.max_new_tokens, self.num_output)
        trunk = trunk[: max(min(budget, self.draft_length), 0)]
        lookup = own_lookup(self.session.tokens)[: max(budget, 0)] if own_lookup is not None else []
        if trunk[: len(lookup)] == lookup:
            lookup = []  # the trunk already holds it
        plan = RoundPlan(trunk, branches if budget > len(trunk) else [], is_predraft, draft is not None,
                         lookup=tuple(lookup))
        limit = min(max_draft_tokens, self.session.room)
        return plan if plan.num_draft_tokens <= limit else plan.cut(limit)

    def commit_text(self, tokens: list[int], is_final: bool) -> bool:
        """The new tokens' text (verifier.detokenize, work proportional to them), cut at the first
        stop string; True if one ended the request."""
        self.text.extend(tokens, is_final)
        cut = self.text.stop_cut(self.stop_strings, self.chars_checked) if self.stop_strings else None
        self.chars_checked = len(self.text.text)
        if cut is not None:
            self.num_output, self.text_limit = cut
        return cut is not None

    def take_chunk(self, tokens: list[int], is_final: bool) -> tuple[list[int], str] | None:
        """The tokens to send now with their text delta, or None to wait: tokens whose text ends
        inside a multi-byte character wait for the next ones, and a request that does not
        stream sends once, at the end."""
        self.unsent.extend(tokens)
        if not self.unsent or (not self.is_stream and not is_final):
            return None
        if self.text.settled < self.num_output and not is_final:
            return None
        end = len(self.text.text) if self.text_limit is None else min(self.text_limit, len(self.text.text))
        delta, self.chars_sent = self.text.text[self.chars_sent : end], max(end, self.chars_sent)
        chunk, self.unsent = self.unsent, []
        return chunk, delta

    @property
    def committed_length(self) -> int:
        return len(self.session.tokens)

    def has_draft_candidate(self) -> bool:
        """A draft that take_draft would use now: a stale one must not start a round without it."""
        return any(self._fits(draft) for draft in self.drafts.values())

    def _fits(self, draft: Draft) -> bool:
        """Its base (length + tail) is a prefix of the committed text, it is usable here by the
        rebase rule (protocol.rules.is_usable_at), and its trunk agrees with every committed
        token past its base."""
        base, length, tokens = draft.base_length, self.committed_length, self.session.tokens
        if not is_usable_at(base, len(draft.trunk), length):
            return False
        tail = list(draft.base_tail)
        fits = not tail or tokens[base - len(tail) : base] == tail
        return fits and list(draft.trunk[: length - base]) == tokens[base:length]

    def needs_no_draft(self) -> bool:
        """Only the target's own next token is left to produce."""
        return self.max_new_tokens - self.num_output <= 1

    def offer(self, draft: Draft) -> bool:
        """Keep a draft for its base; False (stale) if it cannot cover the committed text.

        A drafter drafts ahead at ever larger bases and goes back only when it drops its
        speculation (drafter.server: next_base returns to the committed end), so a draft
        supersedes every pending one based at or beyond its own: those were pre-drafts of text
        that did not come, or an older draft of the same base. Over MAX_PENDING_DRAFTS the one
        drafted farthest ahead goes, never one that fits now (the one a round waits for)."""
        if draft.base_length + len(draft.trunk) < self.committed_length:
            self.stats.num_stale_drafts += 1
            return False
        for base in [b for b in self.drafts if b >= draft.base_length]:
            del self.drafts[base]
            self.stats.num_stale_drafts += 1
        self.drafts[draft.base_length] = draft
        while len(self.drafts) > MAX_PENDING_DRAFTS:
            spare = [b for b, d in self.drafts.items() if not self._fits(d)] or list(self.drafts)
            self.drafts.pop(max(spare))
            self.stats.num_stale_drafts += 1
        return True

    def take_draft(self) -> tuple[list[int], list[list[int]], bool] | None:
        """(trunk, branches, is_predraft) for the committed prefix, or None if no draft fits.

        A draft fits if its base (length + tail) is a prefix of the committed text and its
        trunk agrees with every committed token past that base; its trunk is then rebased
        onto the committed end. So a pre-draft survives a branch accepted beyond its base.
        Drafts based at or behind the committed end are used now or never: they are dropped."""
        length = self.committed_length
        chosen = None
        for base in sorted((b for b in self.drafts if b <= length), reverse=True):
            draft = self.drafts.pop(base)
            covered = length - base
            if chosen is None and self._fits(draft):
                # drafted before its base was verified (the drafter says so), or before the
                # text it is rebased over was (a round ran without it)
                is_predraft = draft.drafted_ahead or base < length
                chosen = (list(draft.trunk[covered:]), [list(b) for b in draft.branches], is_predraft)
            else:
                self.stats.num_stale_drafts += 1
        return chosen
