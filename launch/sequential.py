"""The sequential reference: drafter and verifier engines composed in one process."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drafter.engine import DraftEngine
from drafter.session import DraftSession
from drafter.scheduler import CATCH_UP_TOKENS
from protocol.rules import draft_budget
from verifier.engine import TargetEngine, TargetSession, VerifyResult
from verifier.pass_cost import cut_draft
from verifier.sampling import SamplingParams
from verifier.speculation import SpeculationDecision
from verifier.stopping import finish

RoundHook = Callable[[TargetSession, DraftSession, VerifyResult], None]


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only
    finish_reason: str  # "stop" (a stop token) or "length"
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundStats:
    num_rounds: int = 0
    num_drafted: int = 0
    num_accepted: int = 0
    num_trunk_accepted: int = 0
    num_branch_hits: int = 0
    num_branch_tokens: int = 0

    def record(self, trunk_len: int, result: VerifyResult) -> None:
        self.num_rounds += 1
        self.num_drafted += trunk_len
        self.num_accepted += result.num_accepted
        self.num_trunk_accepted += result.num_trunk_accepted
        self.num_branch_hits += int(result.num_branch_accepted > 0)
        self.num_branch_tokens += result.num_branch_accepted


def generate(
    target: TargetEngine,
    drafter: DraftEngine,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    on_round: RoundHook | None = None,
    sampling: SamplingParams | None = None,
    draft_length: int | None = None,
) -> GenerationResult:
    """Draft, verify, sync, repeat: the reference the pipeline is tested and measured against.
    Each round's draft length comes from the same decision as the pipeline's
    (verifier.speculation), timed here, or is `draft_length` in every round."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    t_session = target.open(prompt_ids, max_new_tokens)
    drafter.limit_vocab(target.vocab_size)  # a draft with padding rows proposes only target ids
    d_session = drafter.open(prompt_ids)
    decision = SpeculationDecision(target.skips_padding)
    decision.reset_drafter(drafter.config.gamma)
    decision.open("")
    stats = RoundStats()
    stops = set(int(t) for t in stop_token_ids)
    new_tokens: list[int] = []
    reason = None
    while reason is None:
        budget = draft_budget(max_new_tokens, len(new_tokens))
        drafter.ask(d_session, decision.choose([""])[0] if draft_length is None else draft_length)
        started = time.perf_counter()
        block = drafter.draft(d_session, budget) if budget > 0 else None
        if d_session.draft_length == 0 and drafter.lags(d_session, CATCH_UP_TOKENS):
            drafter.step(d_session)  # keep the draft's cache and agreement in step (drafter.scheduler)
        decision.wait.observe(d_session.draft_length, time.perf_counter() - started)
        trunk, branches = (block.trunk, block.branches) if block else ([], [])
        trunk, branches = cut_draft(trunk, branches, t_session.room)  # no position past the context
        started = time.perf_counter()
        result = target.verify(t_session, trunk, branches, sampling)
        decision.observe_pass([result.num_nodes], time.perf_counter() - started, is_drafting=False)
        # no trunk: the drafter's prompt-lookup branch sits at the root, as the verifier's own does
        decision.observe_lookup("", len(t_session.tokens) - len(result.appended), 0 if trunk else result.num_accepted)
        stats.record(len(trunk), result)
        _sync_drafter(drafter, d_session, decision, trunk, result)
        if on_round is not None:
            on_round(t_session, d_session, result)
        kept, reason = finish(result.appended, len(new_tokens), max_new_tokens, stops)
        new_tokens += kept
    target.close(t_session)  # the KV slots, free for the next request (a failed one frees them as it drops)
    drafter.close(d_session)
    return GenerationResult(new_tokens, reason, metrics(stats, d_session, len(new_tokens)))


def _sync_drafter(drafter: DraftEngine, session: DraftSession, decision: SpeculationDecision, trunk: list[int],
                  result: VerifyResult) -> None:
    """The drafter after a verification: its cache to the committed text, what it judged there to
    the decision, the target's predictions to its phrase pool."""
    drafter.sync(session, result.appended)
    judged = drafter.take_agreement(session)
    if judged is not None:
        decision.observe_agreement("", *judged)
    drafter.learn(trunk, result.num_trunk_accepted, result.trunk_predictions, result.branch_predictions)


def engine_alone(target: TargetEngine, prompt_ids: Sequence[int], max_new_tokens: int,
                 stop_token_ids: Sequence[int] = (), sampling: SamplingParams | None = None) -> list[int]:
    """Our target engine with no drafts: one token per pass. Beside HF's own decoding it shows how
    much of a speedup is the engine and how much is speculation."""
    session = target.open(prompt_ids, max_new_tokens)
    new_tokens: list[int] = []
    reason = None
    while reason is None:
        result = target.verify(session, [], [], sampling)
        kept, reason = finish(result.appended, len(new_tokens), max_new_tokens, set(stop_token_ids))
        new_tokens += kept
    target.close(session)
    return new_tokens


def metrics(stats: RoundStats, d_session: DraftSession, num_new: int) -> dict[str, float]:
    rounds = max(stats.num_rounds, 1)
    return {
        "rounds": stats.num_rounds,
        "new_tokens": num_new,
        "tokens_per_round": num_new / rounds,
        "drafted_tokens": stats.num_drafted,
        "accepted_tokens": stats.num_accepted,
        "trunk_accepted": stats.num_trunk_accepted,
        # vLLM's definition over the trunk; tokens won from branches are counted apart
        "acceptance_rate": stats.num_trunk_accepted / stats.num_drafted if stats.num_drafted else 0.0,
        "branch_hits": stats.num_branch_hits,
        "branch_tokens": stats.num_branch_tokens,
        "draft_passes": d_session.num_passes,
        "phrase_hits": d_session.num_phrase_hits,
        "phrase_tokens": d_session.num_phrase_tokens,
    }
