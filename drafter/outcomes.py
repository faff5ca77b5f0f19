"""Which verification outcomes to pre-draft for (the speculation cache, docs/architecture.md,
"The speculation cache"): pure maths, no torch, no sockets.

While the verifier checks a block (trunk t_0..t_{g-1} on committed length b), the drafter drafts
the next block for the outcomes most likely to happen. An outcome is (k, c): the target accepts
the first k trunk tokens and then writes its own token c at position b + k (for k < g, c is not
the trunk's token there, or the target would have accepted it)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CANDIDATES_PER_POSITION = 4  # the draft's top tokens kept per drafted position (SSD's F)


@dataclass(frozen=True)
class Outcome:
    position: int  # b + k: where the target's own token lands
    token: int  # c, the target's token there
    probability: float


@dataclass
class OutcomeBranch:
    """One outcome's next block being drafted: tokens[0] is the outcome's token c at `position`,
    tokens[1:] the draft's greedy continuation after it. Entry entries[i] of the KV cache holds
    tokens[i] (fed; the last token is fed by the next pass)."""

    position: int
    tokens: list[int]
    probability: float
    entries: list[int] = field(default_factory=list)
    candidates: list[list[tuple[int, float]]] = field(default_factory=list)  # per tokens[1:]


def likely_outcomes(base: int, chain: Sequence[int], candidates: Mapping[int, Sequence[tuple[int, float]]],
                    acceptance: float, limit: int) -> list[Outcome]:
    """The `limit` most likely outcomes, most likely first.

    `chain` is what the draft wrote from `base` on: the trunk t_0..t_{g-1}, then its own token at
    b + g. `candidates[p]` is the draft's top tokens at position p with their probabilities.

    Rule, with a the draft's measured per-token acceptance: the target accepts k tokens and
    rejects the next with probability a^k (1 - a); having rejected the draft's token d there, it
    writes c with probability q(c) / (1 - q(d)), q being the draft's distribution (its best
    guess at the target's). After the whole trunk (k = g) it writes c with probability a^g q(c)."""
    trunk_length = len(chain) - 1
    found: list[Outcome] = []
    reach = 1.0  # probability that the first k trunk tokens are accepted
    for k in range(trunk_length + 1):
        position, own = base + k, chain[k]
        options = candidates.get(position, ())
        if k < trunk_length:
            q_own = next((q for token, q in options if token == own), 0.0)
            scale = reach * (1.0 - acceptance) / max(1.0 - q_own, 1e-6)
        else:
            scale = reach
        found.extend(Outcome(position, token, scale * q) for token, q in options
                     if token != own or k == trunk_length)
        reach *= acceptance
    found.sort(key=lambda outcome: -outcome.probability)
    return found[:limit]


def matching_branch(branches: Sequence[OutcomeBranch], chain: Sequence[int], start: int,
                    appended: Sequence[int]) -> OutcomeBranch | None:
    """The branch a verdict landed on, with the most tokens drafted past it: the committed text
    grew by `appended` from `start`; it follows the drafter's `chain` (its tokens from 0) up to
    the branch's position and the branch from there, and the branch goes on past it."""
    best, best_extra = None, 0
    for branch in branches:
        offset = branch.position - start
        if not 0 <= offset < len(appended) or list(chain[start : branch.position]) != list(appended[:offset]):
            continue
        rest = appended[offset:]
        extra = len(branch.tokens) - len(rest)
        if extra > best_extra and list(branch.tokens[: len(rest)]) == list(rest):
            best, best_extra = branch, extra
    return best


def branch_entries(branch: OutcomeBranch, chain_length: int) -> list[int]:
    """The KV entries to keep when the verdict lands on `branch`: the chain's entries before the
    branch's position (entry j holds position j there), then the branch's own, in order."""
    return list(range(min(branch.position, chain_length))) + branch.entries


def outcome_rank(base: int, chain: Sequence[int], candidates: Mapping[int, Sequence[tuple[int, float]]],
                 acceptance: float, appended: Sequence[int], num_verified: int) -> int | None:
    """Where the outcome a verdict brought ranks among likely_outcomes for the block it verified
    (0 = the most likely); None when no ranking could hold it: the text went past the trunk's
    end (a branch was accepted), or the target's token is not among the draft's candidates."""
    k = len(appended) - 1
    if k > num_verified or len(chain) <= num_verified:
        return None
    ranked = likely_outcomes(base, chain[: num_verified + 1], candidates, acceptance, limit=1 << 16)
    return next((i for i, o in enumerate(ranked) if (o.position, o.token) == (base + k, appended[-1])), None)
