"""The speculation cache: the draft engine's pre-drafts for the verification outcomes other than
its chain's (drafter.outcomes says which), drafted as one tree over the session's own KV slot.

Layout of a session's cache while it holds outcome branches: entries 0..chain-1 are the chain's
(entry j at position j), then each tree pass appends one entry per live branch. A branch's token
sees the chain's entries before its position and its own branch's entries, exactly what it
would see had the text gone its way, so its entries stay valid when the verdict lands on it:
they are then moved into place behind the chain's (kvcache.slots.Slot.keep), and the
cache is what a fresh prefill of the new text gives. On any other verdict they are dropped."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from drafter.outcomes import CANDIDATES_PER_POSITION, OutcomeBranch, branch_entries, likely_outcomes, matching_branch
from drafter.session import DraftSession
from kvcache.attention import forward_one
from kvcache.slots import Slot


class OutcomeDrafting:
    """Mixed into drafter.engine.DraftEngine (which owns the model, the slots and the config)."""

    def predict(self, logits: torch.Tensor) -> list[int]:
        """The draft's greedy token for each row of logits, as a token id the target has."""
        if self.token_ids is not None:  # a reduced output vocabulary: map back to token ids
            return self.token_ids[logits.argmax(dim=-1)].tolist()
        return logits[..., : self.num_proposable].argmax(dim=-1).tolist()

    def top_candidates(self, logits: torch.Tensor) -> list[list[tuple[int, float]]]:
        """Each row's CANDIDATES_PER_POSITION most likely token ids with their probabilities."""
        if self.token_ids is None and self.num_proposable is not None:
            logits = logits[..., : self.num_proposable]
        probs = torch.softmax(logits.float(), dim=-1)
        top = probs.topk(min(CANDIDATES_PER_POSITION, probs.shape[-1]), dim=-1)
        ids = self.token_ids[top.indices] if self.token_ids is not None else top.indices
        return [list(zip(row_ids, row_probs)) for row_ids, row_probs in zip(ids.tolist(), top.values.tolist())]

    @property
    def has_cache(self) -> bool:
        """The speculation cache is on: --pre-drafts on (as launch resolves auto), --outcomes > 0,
        and draft passes not replayed as CUDA graphs (a tree pass runs eagerly, which on a GPU
        costs several graphed passes: more than the verifier's pass it hides behind)."""
        return self.config.outcomes > 0 and self.config.pre_drafts == "on" and self.graphs is None

    @property
    def keeps_candidates(self) -> bool:
        """The draft's top tokens are kept at each drafted position: for the cache, or for the
        ranks --record-rounds writes."""
        return self.has_cache or bool(self.config.record_rounds)

    def plan_outcomes(self, session: DraftSession, base: int, trunk_length: int) -> bool:
        """Start the tree for the block on `base` under verification (trunk_length tokens): True
        when its branches are set (the chain has drafted past the trunk and knows the draft's
        candidates there), False when nothing can be planned yet."""
        if session.outcome_base == base:
            return bool(session.outcomes)
        end = base + trunk_length
        if session.cache_length < end or len(session.tokens) <= end or any(
                p not in session.candidates for p in range(base, end + 1)):
            return False
        self.drop_outcomes(session)
        session.outcome_base, session.outcome_chain = base, session.cache_length
        chain = session.tokens[base : end + 1]
        session.outcomes = [OutcomeBranch(o.position, [o.token], o.probability) for o in likely_outcomes(
            base, chain, session.candidates, session.acceptance, self.config.outcomes)]
        return bool(session.outcomes)

    def outcomes_pending(self, session: DraftSession, depth: int) -> list[OutcomeBranch]:
        """The branches with fewer than `depth` drafted tokens that can still grow."""
        room = self.slots.max_len - session.cache_length if isinstance(session.cache, Slot) else len(session.outcomes)
        pending = [b for b in session.outcomes
                   if len(b.tokens) <= depth and b.position + len(b.tokens) < self.max_context - 1]
        return pending[: max(room, 0)]

    @torch.inference_mode()
    def step_outcomes(self, session: DraftSession, depth: int) -> int:
        """One tree pass: each pending branch's last token is fed and its next drafted. Returns the
        branches stepped."""
        branches = self.outcomes_pending(session, depth)
        if not branches:
            return 0
        past = session.cache_length
        seen = torch.zeros(len(branches), past, dtype=torch.bool)
        positions = list(range(session.outcome_chain)) + [0] * (past - session.outcome_chain)
        for branch in session.outcomes:
            for i, entry in enumerate(branch.entries):
                positions[entry] = branch.position + i
        for row, branch in enumerate(branches):
            seen[row, : branch.position] = True
            seen[row, branch.entries] = True
        tokens = [b.tokens[-1] if b.tokens[-1] < self.num_embeddable else 0 for b in branches]
        rows = [b.position + len(b.tokens) - 1 for b in branches]
        logits = forward_one(self.model, self.kinds, session.cache, tokens, rows,
                             torch.eye(len(branches), dtype=torch.bool), past=(seen, positions))
        candidates = self.top_candidates(logits)
        for row, (branch, token) in enumerate(zip(branches, self.predict(logits))):
            branch.entries.append(past + row)
            branch.tokens.append(token)
            branch.candidates.append(candidates[row])
        session.num_tree_passes += 1
        return len(branches)

    def drop_outcomes(self, session: DraftSession) -> None:
        """Forget the tree: its entries leave the cache, which holds the chain's alone again."""
        if session.outcome_base is not None and session.cache_length > session.outcome_chain:
            session.cache.keep(list(range(session.outcome_chain)))
        session.outcomes, session.outcome_base = [], None

    def adopt_outcome(self, session: DraftSession, appended: Sequence[int], chain_extra: int) -> bool:
        """The verdict committed `appended`: if a branch holds them and drafted more than
        `chain_extra` tokens past them (what the chain has), it becomes the session's draft
        (tokens, cache, candidates)."""
        branch = matching_branch(session.outcomes, session.tokens, session.num_committed, appended)
        if branch is None or len(branch.tokens) - (session.num_committed + len(appended) - branch.position) <= chain_extra:
            return False
        position = branch.position
        session.cache.keep(branch_entries(branch, session.outcome_chain))
        session.tokens = session.tokens[:position] + branch.tokens
        for offset, candidates in enumerate(branch.candidates):
            session.candidates[position + 1 + offset] = candidates
        session.outcomes, session.outcome_base = [], None
        session.num_outcome_hits += 1
        return True
