"""The target engine: owns the target model and per-request KV caches; verifies token trees."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvcache.attention import attention_kinds, new_cache, prefill
from kvcache.batch import BatchRow, run_pass
from kvcache.graphs import GraphedPasses
from kvcache.packed import has_packed_layers
from kvcache.slots import Slot, SlotPool, resolve_max_len
from protocol.validation import prompt_problem
from verifier.sampling import SamplingParams, next_tokens
from verifier.tree import accept_greedy, build_tree


@dataclass
class TargetSession:
    """One request on the target side; it alone owns the truth (the committed tokens).
    Invariant after open and after every verify: cache length == len(tokens) - 1."""

    tokens: list[int]
    num_prompt: int
    cache: Slot
    max_context: int = 1 << 30  # the target's context: no position may reach it

    @property
    def cache_length(self) -> int:
        return self.cache.get_seq_length()

    @property
    def room(self) -> int:
        """Draft tokens a tree may hold now without a position running past the context."""
        return self.max_context - 1 - len(self.tokens)


@dataclass(frozen=True)
class VerifyResult:
    appended: list[int]  # accepted draft tokens + the target's own next token
    num_trunk_accepted: int
    num_branch_accepted: int  # tokens accepted from a branch (after the whole trunk, or the lookup at the root)
    trunk_predictions: list[int]  # target argmax at the root and after each trunk token
    branch_predictions: list[list[int]]  # target argmax after each branch token
    num_nodes: int = 1  # tokens in the verified tree, root included

    @property
    def num_accepted(self) -> int:
        return self.num_trunk_accepted + self.num_branch_accepted


class TargetEngine:
    def __init__(self, model: torch.nn.Module, max_sessions: int = 16, max_len: int | None = None,
                 cuda_graphs: bool = True) -> None:
        """KV slots for `max_sessions` requests of up to `max_len` tokens (kvcache.slots): no
        more sessions at once (the server admits no more; kvcache.attention.NoFreeSlot). On CUDA, verification passes over slots replay
        CUDA graphs (kvcache.graphs) unless `cuda_graphs` is False."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.kinds = attention_kinds(model.config)  # refuses models whose cache cannot be cropped
        self.vocab_size = int(model.config.vocab_size)
        self.max_context = resolve_max_len(model.config, max_len)  # the longest a request may grow
        self.slots = SlotPool(model.config, max_sessions, self.max_context, next(model.parameters()).dtype,
                              self.device)
        self.graphs = GraphedPasses(model, self.kinds, self.slots) if cuda_graphs and self.device.type == "cuda" \
            else None
        # a batched pass over slots computes only its real tokens in packed layers (kvcache.packed)
        self.skips_padding = self.graphs is None and has_packed_layers(model)

    def use_threads(self, num_threads: int) -> None:
        """Torch threads for the next passes (the verifier takes the drafter's cores while it rests)."""
        if num_threads != torch.get_num_threads():
            torch.set_num_threads(num_threads)

    def check_prompt(self, prompt_ids: Sequence[int], max_new_tokens: int = 0) -> list[int]:
        """The prompt as ints; ValueError if it is empty, holds ids the target does not have, or
        it and max_new_tokens would run past the target's context."""
        tokens = [int(t) for t in prompt_ids]
        problem = prompt_problem(tokens, max_new_tokens, self.vocab_size, self.max_context)
        if problem is not None:
            raise ValueError(problem)
        return tokens

    @torch.inference_mode()
    def open(self, prompt_ids: Sequence[int], max_new_tokens: int = 0) -> TargetSession:
        """Prefill all prompt tokens but the last (fed as the root of the first tree)."""
        tokens = self.check_prompt(prompt_ids, max_new_tokens)
        session = TargetSession(tokens, len(tokens), new_cache(self.slots), self.max_context)
        if len(tokens) > 1:
            prefill(self.model, self.kinds, session.cache, tokens[:-1])
        return session

    def close(self, session: TargetSession) -> None:
        """The request is done: its KV slot is free for the next one at once."""
        session.cache.free()

    @torch.inference_mode()
    def verify(
        self, session: TargetSession, trunk: Sequence[int], branches: Sequence[Sequence[int]] = (),
        sampling: SamplingParams | None = None, lookup: Sequence[int] = (),
    ) -> VerifyResult:
        """Verify trunk + branches (+ a lookup branch at the root, see verifier.tree.build_tree)
        in one target forward pass and commit the result (greedy, or keyed sampling: see
        verifier.sampling.next_tokens)."""
        return self.verify_batch([(session, trunk, branches, sampling, lookup)])[0]

    @torch.inference_mode()
    def verify_batch(self, work: Sequence[tuple]) -> list[VerifyResult]:
        """Verify several requests' trees in one target pass (see kvcache.batch). Each item is
        (session, trunk, branches, sampling) or (session, trunk, branches, sampling, lookup)."""
        trees = [self._tree(session, trunk, branches, lookup[0] if lookup else ())
                 for session, trunk, branches, _, *lookup in work]
        bases = [session.cache_length for session, *_ in work]
        rows = [BatchRow(tree.tokens, [base + d for d in tree.depths], tree.visibility())
                for tree, base in zip(trees, bases)]
        caches = [session.cache for session, *_ in work]
        all_logits = run_pass(self.model, self.kinds, self.graphs, caches, rows)
        return [self._commit(session, tree, base, logits, sampling)
                for (session, _, _, sampling, *_), tree, base, logits in zip(work, trees, bases, all_logits)]

    def _tree(self, session: TargetSession, trunk: Sequence[int], branches: Sequence[Sequence[int]],
              lookup: Sequence[int] = ()):
        """The token tree to verify, as given (plans cut it: verifier.requests.plan_round)."""
        tree = build_tree(session.tokens[-1], [int(t) for t in trunk], [[int(t) for t in b] for b in branches],
                          [int(t) for t in lookup])
        if len(tree.tokens) - 1 > session.room:
            raise ValueError(f"a tree of {len(tree.tokens) - 1} draft tokens runs past the target's context "
                             f"({session.room} positions left)")
        return tree

    def _commit(self, session: TargetSession, tree, base: int, logits: torch.Tensor,
                sampling: SamplingParams | None) -> VerifyResult:
        """Accept along the tree, keep the accepted nodes' cache entries, extend the text."""
        # a node at depth d predicts the token at absolute index len(tokens) + d
        predictions = next_tokens(logits, [len(session.tokens) + d for d in tree.depths], sampling)
        path, next_token = accept_greedy(tree, predictions)

        # accepted branch entries move into place: their rotary positions are already final
        session.cache.keep(list(range(base + 1)) + [base + node for node in path])
        appended = [tree.tokens[node] for node in path] + [next_token]
        session.tokens.extend(appended)
        trunk_nodes = set(tree.trunk_nodes)
        num_trunk = sum(1 for node in path if node in trunk_nodes)
        return VerifyResult(
            appended=appended,
            num_trunk_accepted=num_trunk,
            num_branch_accepted=len(path) - num_trunk,
            trunk_predictions=[predictions[0]] + [predictions[n] for n in tree.trunk_nodes],
            branch_predictions=[[predictions[n] for n in nodes] for nodes in tree.branch_nodes],
            num_nodes=len(tree.tokens),
        )
