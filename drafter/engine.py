"""The draft engine: owns the draft model, its KV caches and the phrase pool; no sockets."""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import replace

import torch

from drafter.config import DrafterConfig
from kvcache.attention import attention_kinds, new_cache
from kvcache.slots import Slot, SlotPool, resolve_max_len
from kvcache.batch import BatchRow, run_pass
from kvcache.graphs import GraphedPasses
from drafter.lookahead import PassLayout, build_pass_layout, longest_phrase_match
from protocol.prompt_lookup import NgramIndex
from drafter.pool import PhrasePool
from drafter.session import DraftBlock, DraftSession
from drafter.speculation_cache import OutcomeDrafting


ACCEPTANCE_WEIGHT = 0.05  # of each new Agreement bit in the session's running acceptance
log = logging.getLogger("ouroboros.drafter")
MAX_APPENDED = 64  # tokens one verdict may append beyond a --gamma trunk (a branch, the target's own lookup)


def pass_margin(config: DrafterConfig) -> int:
    """KV slot columns past --max-len: a pass feeds the uncached text (at most a trunk, a branch
    and the target's token after a verdict) and the lookahead window's and checked phrases' tokens."""
    return (config.gamma + MAX_APPENDED + 2 + (config.window + config.phrases_checked) * config.ngram
            + config.outcomes * (config.gamma + 1))  # the speculation cache's branches


class DraftEngine(OutcomeDrafting):
    """Phrase-by-phrase drafting (Ouroboros; docs/architecture.md, "The algorithm") in the draft model."""

    def __init__(self, model: torch.nn.Module, config: DrafterConfig, pool: PhrasePool | None = None,
                 max_sessions: int = 16, max_len: int | None = None, cuda_graphs: bool = True) -> None:
        """KV slots for `max_sessions` sessions of up to `max_len` tokens (kvcache.slots), plus room
        for one lookahead pass past the end (no more sessions at once: kvcache.attention.NoFreeSlot). On CUDA,
        draft passes over slots replay CUDA graphs (kvcache.graphs) unless `cuda_graphs` is False."""
        self.model = model.eval()
        self.config = config
        self.pool = pool or PhrasePool(config.phrase_length, config.pool_size)
        if self.pool.phrase_length != config.phrase_length:
            raise ValueError(
                f"phrase pool holds phrases of {self.pool.phrase_length} tokens but --ngram "
                f"{config.ngram} needs {config.phrase_length}"
            )
        self.device = next(model.parameters()).device
        self.kinds = attention_kinds(model.config)  # refuses models whose cache cannot be cropped
        self.max_context = resolve_max_len(model.config, max_len, clamp=True)
        self.slots = SlotPool(model.config, max_sessions, self.max_context + pass_margin(config),
                              next(model.parameters()).dtype, self.device)
        self.graphs = GraphedPasses(model, self.kinds, self.slots) if cuda_graphs and self.device.type == "cuda" \
            else None
        if self.graphs is not None and config.outcomes and config.pre_drafts == "on":
            log.info("the speculation cache is off: draft passes replay CUDA graphs and a tree pass would run eagerly "
                     "(--no-cuda-graphs turns it on)")
        self.token_ids: torch.Tensor | None = getattr(model, "draft_token_ids", None)
        # a pair may differ by padding rows past the shared tokenizer (docs/architecture.md, "Models"): the draft
        # embeds only its own rows and proposes only ids the target has (see limit_vocab)
        self.num_embeddable = int(model.get_input_embeddings().num_embeddings)
        self.num_proposable: int | None = None

    def limit_vocab(self, target_vocab_size: int) -> None:
        """Propose only token ids below the target's vocabulary size."""
        self.num_proposable = int(target_vocab_size)

    def open(self, token_ids: Sequence[int], draft_length: int | None = None) -> DraftSession:
        """Start (or re-sync) a session on the committed tokens; nothing is computed yet.
        `draft_length` (default --gamma) is what the verifier asks for, at most --gamma."""
        tokens = [int(t) for t in token_ids]
        if not tokens:
            raise ValueError("cannot draft from an empty prompt")
        if self.config.seed_pool_from_text:
            self.pool.add_from_text(tokens)
        rng = random.Random(len(tokens))
        level0 = [rng.choice(tokens) for _ in range(self.config.window)]
        window = [level0] if self.config.window and self.config.ngram > 2 else []
        cache = new_cache(self.slots)
        session = DraftSession(tokens, len(tokens), cache, window, self.config.gamma, judged=len(tokens),
                               lookup=NgramIndex(self.config.lookup_ngram, self.config.lookup_min_ngram))
        self.ask(session, self.config.gamma if draft_length is None else draft_length)
        return session

    def ask(self, session: DraftSession, draft_length: int) -> None:
        """The verifier's draft length for the next round, within 0..--gamma."""
        session.draft_length = min(max(int(draft_length), 0), self.config.gamma)

    def close(self, session: DraftSession) -> None:
        """The request is done (or re-opened): its KV slot is free at once."""
        session.cache.free()

    def goal(self, session: DraftSession, budget: int | None) -> int:
        """Draft tokens wanted beyond the committed text: the asked length, within the budget."""
        return session.draft_length if budget is None else max(0, min(session.draft_length, budget))

    def draft(self, session: DraftSession, budget: int | None = None) -> DraftBlock:
        """Extend the session's draft to the asked length (or `budget`, if smaller) and return
        the trunk with up to K pool phrases keyed by its last token as branches."""
        goal = self.goal(session, budget)
        while session.num_drafted < goal and self.can_step(session):
            self.step(session)
        return self.block_at(session, session.num_committed, budget)

    def can_step(self, session: DraftSession) -> bool:
        return len(session.tokens) < self.max_context - 1

    def block_at(self, session: DraftSession, base: int, budget: int | None = None) -> DraftBlock:
        """The block for a verifier whose committed length is `base` (<= len(tokens)): the
        drafted tokens after it as trunk, then branches after the trunk: the prompt-lookup
        continuation of the text so far, and K pool phrases keyed by the trunk's last token."""
        c = self.config
        cap = session.draft_length if budget is None else min(session.draft_length, max(budget, 0))
        trunk = session.tokens[base : base + cap]
        key = trunk[-1] if trunk else session.tokens[base - 1]
        room = c.lookup_tokens if budget is None else min(c.lookup_tokens, budget - len(trunk))
        lookup = session.lookup.lookup(session.tokens[: base + len(trunk)], min(session.num_committed, base), room)
        branches = [lookup] if lookup else []
        for phrase in self.pool.most_recent(key, c.branches):
            if list(phrase) != lookup[: len(phrase)]:  # no branch that the lookup one already covers
                branches.append(list(phrase))
        return DraftBlock(trunk, branches)

    @torch.inference_mode()
    def step(self, session: DraftSession) -> list[int]:
        """One draft forward pass; returns the tokens it appended (1 + accepted phrase tokens)."""
        self.drop_outcomes(session)
        phrases, layout = self._layout(session)
        return self._advance(session, phrases, layout, self._forward(session.cache, layout))

    @torch.inference_mode()
    def step_batch(self, sessions: Sequence[DraftSession]) -> list[list[int]]:
        """One draft forward pass for several sessions (padded, see kvcache.batch). The pool is
        read for all of them first, so each ends as its own step() would have left it had they
        run one after another on that pool."""
        if len(sessions) == 1:
            return [self.step(sessions[0])]
        for session in sessions:
            self.drop_outcomes(session)
        prepared = [self._layout(session) for session in sessions]
        rows = [BatchRow(layout.tokens, layout.positions, layout.visible) for _, layout in prepared]
        caches = [session.cache for session in sessions]
        all_logits = run_pass(self.model, self.kinds, self.graphs, caches, rows,
                              keep=[layout.logit_indices for _, layout in prepared])
        return [self._advance(session, phrases, layout, logits)
                for session, (phrases, layout), logits in zip(sessions, prepared, all_logits)]

    def _layout(self, session: DraftSession):
        """The pool phrases checked in this pass and the pass layout (drafter.lookahead), with
        logits also at the fed tokens whose next committed token is not yet judged (Agreement).
        Asked for no draft, the pass only catches up: no window, no phrases."""
        past_len = session.cache_length
        fed = session.tokens[past_len:]
        is_catching_up = session.draft_length == 0
        phrases = [] if is_catching_up else self.pool.most_recent(session.tokens[-1], self.config.phrases_checked)
        layout = build_pass_layout(fed, past_len, [] if is_catching_up else session.window, phrases)
        judged = [i for i in range(len(fed) - 1)
                  if session.judged <= past_len + i + 1 < session.num_committed and past_len + i + 1 not in session.agreed]
        return phrases, self._embeddable(replace(layout, judged_indices=judged))

    def _embeddable(self, layout: PassLayout) -> PassLayout:
        """The layout with ids past the draft's embedding rows (a target's padding rows, which a
        target may still emit) fed as id 0: the draft only guesses, the target checks every token."""
        if max(layout.tokens) < self.num_embeddable:
            return layout
        return replace(layout, tokens=[t if t < self.num_embeddable else 0 for t in layout.tokens])

    def _advance(self, session: DraftSession, phrases, layout, logits: torch.Tensor) -> list[int]:
        """Apply one pass's logits (rows = layout.logit_indices): the next token, the longest
        verified phrase, the cache entries kept, the window slid."""
        past_len = layout.positions[0]
        predictions = self.predict(logits)
        next_token = predictions[0]
        row_of = {index: n for n, index in enumerate(layout.logit_indices)}
        for index in layout.judged_indices:  # teacher-forced: the token after fed token `index`
            position = past_len + index + 1
            session.agreed[position] = int(predictions[row_of[index]] == session.tokens[position])

        best, best_len = -1, 0
        for j, slots in enumerate(layout.phrase_indices):
            matched = longest_phrase_match(next_token, phrases[j], [predictions[row_of[s]] for s in slots])
            if matched > best_len:
                best, best_len = j, matched
        appended = [next_token]
        keep = list(range(past_len + layout.current_index + 1))
        if best_len:
            slots = layout.phrase_indices[best]
            # accepted phrase tokens, then the draft's own token after the last of them
            appended = list(phrases[best][:best_len]) + [predictions[row_of[slots[best_len - 1]]]]
            keep += [past_len + s for s in slots[:best_len]]
            session.num_phrase_hits += 1
            session.num_phrase_tokens += best_len
        if self.keeps_candidates:  # the distribution each appended token was drafted from
            rows = [0] + [row_of[s] for s in layout.phrase_indices[best][:best_len]] if best_len else [0]
            for offset, candidates in enumerate(self.top_candidates(logits[rows])):
                session.candidates[len(session.tokens) + offset] = candidates
        session.cache.keep(keep)
        if layout.last_row_indices:  # a pass without the window leaves it as it was
            self._slide_window(session, [predictions[row_of[i]] for i in layout.last_row_indices])
        session.tokens.extend(appended)
        session.num_passes += 1
        return appended

    def sync(self, session: DraftSession, appended: Sequence[int]) -> bool:
        """Apply a verdict: the committed text grew by `appended`. Keeps the draft (and its cache)
        where it agrees, else takes the speculation cache's branch for this outcome if it has one,
        else crops back to the common prefix. Returns True when a pre-drafted continuation beyond
        the new committed text is valid (the chain's or a branch's)."""
        start = session.num_committed
        drafted = session.tokens[start:]
        common = 0
        while common < min(len(drafted), len(appended)) and drafted[common] == appended[common]:
            common += 1
        kept = common == len(appended)
        # the drafted tokens are the draft's greedy chain from `start`: each matched one, and the
        # first that differs, was predicted from committed tokens alone (Agreement)
        for j in range(min(common + 1, len(drafted), len(appended))):
            session.agreed.setdefault(start + j, int(j < common))
        if self.adopt_outcome(session, [int(t) for t in appended], len(drafted) - common if kept else 0):
            kept = True  # the speculation cache had drafted for this outcome: its branch is the draft now
        else:
            self.drop_outcomes(session)
        if not kept:
            session.tokens = session.tokens[: start + common] + [int(t) for t in appended[common:]]
            valid = min(session.cache_length, start + common)
            session.cache.keep(list(range(valid)))
        session.num_committed = start + len(appended)
        session.candidates = {p: c for p, c in session.candidates.items()
                              if session.num_committed <= p < len(session.tokens)}
        if self.config.seed_pool_from_text:
            self.pool.add_from_text(session.tokens[: session.num_committed], start)
        return kept

    def take_agreement(self, session: DraftSession) -> tuple[int, list[int]] | None:
        """(start, bits) judged since the last call, in order of position; None if none."""
        start, bits = session.judged, []
        while session.judged in session.agreed:
            bits.append(session.agreed.pop(session.judged))
            session.judged += 1
            session.acceptance += ACCEPTANCE_WEIGHT * (bits[-1] - session.acceptance)
        return (start, bits) if bits else None

    def lags(self, session: DraftSession, num_tokens: int) -> bool:
        """At least `num_tokens` committed positions wait to be judged, and tokens wait to be fed
        (a catch-up pass is due)."""
        is_fed = session.cache_length >= len(session.tokens) - 1
        return session.num_committed - session.judged >= num_tokens and not is_fed and self.can_step(session)

    def learn(
        self,
        trunk: Sequence[int],
        num_trunk_accepted: int,
        trunk_predictions: Sequence[int],
        branch_predictions: Sequence[Sequence[int]],
    ) -> None:
        """Phrases from the target (docs/architecture.md, "The algorithm"): after a rejection, the
        target's predictions from the correction on form a phrase keyed by the correction; after a
        full trunk accept, each branch is replaced by its target-corrected version."""
        n = self.config.phrase_length
        if num_trunk_accepted < len(trunk):
            tail = trunk_predictions[num_trunk_accepted:]
            if len(tail) > n:
                self.pool.add(tail[0], tail[1 : 1 + n])
            return
        if not trunk:
            return
        for preds in branch_predictions:
            corrected = [trunk_predictions[-1], *preds[:-1]]
            self.pool.add(trunk[-1], corrected)

    def _slide_window(self, session: DraftSession, new_level: list[int]) -> None:
        """Jacobi window update: grow until N-1 levels, then harvest one n-gram per column
        (key = level 0 token, phrase = levels 1.. + the new prediction) and slide one level."""
        window = session.window
        if not window:
            return
        if len(window) < self.config.ngram - 1:
            window.append(new_level)
            return
        for col, token in enumerate(new_level):
            self.pool.add(window[0][col], [row[col] for row in window[1:]] + [token])
        session.window = window[1:] + [new_level]

    def _forward(self, cache: Slot, layout) -> torch.Tensor:
        """The logits of the layout's `logit_indices` after one pass (kvcache.batch.run_pass)."""
        row = BatchRow(layout.tokens, layout.positions, layout.visible)
        return run_pass(self.model, self.kinds, self.graphs, [cache], [row], keep=[layout.logit_indices])[0]
