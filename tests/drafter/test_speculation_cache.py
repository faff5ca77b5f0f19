"""The speculation cache (drafter.outcomes, drafter.speculation_cache): which outcomes it drafts
for, and that after any run of hits and misses the draft's cache is a fresh prefill and a hit's
block is the draft's own greedy continuation of the committed text."""
import random

import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from drafter.outcomes import OutcomeBranch, likely_outcomes, matching_branch
from tests.conftest import reference_greedy
from tests.families import FAMILIES, family_model
from kvcache.attention import attention_kinds, prefill
from tests.kvcache.test_slots import fresh_slot


def assert_cache_is_a_fresh_prefill(model, session):
    """The session's cache holds what a fresh prefill of its text (but the last token) holds, in a
    cache that keeps every entry (sliding layers too: the mask applies the window)."""
    expected = fresh_slot(model)
    prefill(model, attention_kinds(model.config), expected, session.tokens[:-1])
    for got, want in zip(session.cache.layers, expected.layers):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-4)


def test_outcomes_are_ranked_by_acceptance_times_the_drafts_probability():
    # trunk [10, 11], then the draft's own 12; candidates per position with probabilities
    candidates = {5: [(10, 0.6), (20, 0.3), (21, 0.1)], 6: [(11, 0.5), (30, 0.4)], 7: [(12, 0.7), (40, 0.2)]}
    found = likely_outcomes(5, [10, 11, 12], candidates, acceptance=0.5, limit=10)
    got = {(o.position, o.token): o.probability for o in found}
    # a trunk token is never an outcome there (the target would have accepted it); after the
    # whole trunk the draft's own next token is one
    assert set(got) == {(5, 20), (5, 21), (6, 30), (7, 12), (7, 40)}
    assert got[(5, 20)] == pytest.approx(0.5 * 0.3 / 0.4)  # rejected at once, then c given not-d
    assert got[(6, 30)] == pytest.approx(0.5 * 0.5 * 0.4 / 0.5)
    assert got[(7, 12)] == pytest.approx(0.25 * 0.7)  # both accepted, then the bonus token
    assert [(o.position, o.token) for o in found][:3] == [(5, 20), (6, 30), (7, 12)]
    assert len(likely_outcomes(5, [10, 11, 12], candidates, 0.5, limit=2)) == 2


def test_a_verdict_lands_on_the_branch_that_holds_it_and_drafted_furthest():
    chain = [1, 2, 3, 10, 11, 12]  # committed [1, 2, 3], then the trunk [10, 11] and the draft's 12
    rejected = OutcomeBranch(position=4, tokens=[30, 5, 6], probability=0.2)
    bonus = OutcomeBranch(position=5, tokens=[12, 7], probability=0.1)
    branches = [rejected, bonus]
    assert matching_branch(branches, chain, 3, [10, 30]) is rejected
    assert matching_branch(branches, chain, 3, [10, 30, 5]) is rejected
    assert matching_branch(branches, chain, 3, [10, 30, 5, 6]) is None  # nothing drafted past the verdict
    assert matching_branch(branches, chain, 3, [10, 31]) is None
    assert matching_branch(branches, chain, 3, [30]) is None  # the text left the chain before the branch
    assert matching_branch(branches, chain, 3, [10, 11, 12]) is bonus  # the chain's own outcome


def draft_tree(engine, session, length: int) -> None:
    """A round's drafter work with the cache on: the trunk, the chain one token past it (as the
    scheduler has it), then the outcome branches to full depth."""
    engine.ask(session, length)
    engine.draft(session)
    engine.step(session)  # the chain's pre-draft begins: the draft's own token after the trunk
    base = session.num_committed
    assert engine.plan_outcomes(session, base, min(length, len(session.tokens) - base - 1))
    while engine.outcomes_pending(session, length):
        engine.step_outcomes(session, length)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_stays_a_fresh_prefill_over_random_hits_and_misses(family):
    """Verdicts that land on an outcome branch (hits), on the chain, or nowhere (misses): after
    each, the cache holds exactly a fresh prefill of the text, and after a hit the drafted tokens
    are the draft's own greedy continuation of the committed text. Sliding windows included
    (the target-shaped models below slide a window of 8 tokens)."""
    model = family_model(family, 320, 2, seed=3)
    engine = DraftEngine(model, DrafterConfig(gamma=4, window=2, ngram=3, phrases_checked=2, outcomes=6, pre_drafts="on"))
    engine.limit_vocab(320)
    session = engine.open([5, 17, 33, 2, 40, 41, 5, 17, 9, 12])
    rng = random.Random(family)
    hits = misses = 0
    for round_ in range(12):
        draft_tree(engine, session, 4)
        start = session.num_committed
        if round_ % 3 != 2 and session.outcomes:
            branch = rng.choice(session.outcomes)
            appended = session.tokens[start : branch.position] + branch.tokens[:1]
        else:
            appended = session.tokens[start : start + rng.randint(0, 2)] + [rng.randrange(320)]
        before = session.num_outcome_hits
        engine.sync(session, appended)
        assert_cache_is_a_fresh_prefill(model, session)
        assert session.cache_length == len(session.tokens) - 1 and not session.outcomes
        if session.num_outcome_hits > before:
            hits += 1
            committed = session.tokens[: session.num_committed]
            drafted = session.tokens[session.num_committed :]
            assert drafted == reference_greedy(model, committed, len(drafted))
        else:
            misses += 1
    assert hits >= 3 and misses >= 1


def test_a_verdict_no_branch_holds_leaves_no_tree_entry_behind():
    """A miss: the tree's entries go, the chain is cropped where the text left it."""
    model = family_model("llama", 320, 2, seed=1)
    engine = DraftEngine(model, DrafterConfig(gamma=3, outcomes=4, pre_drafts="on"))
    session = engine.open([7, 8, 9, 10, 11, 12])
    draft_tree(engine, session, 3)
    assert session.cache_length > len(session.tokens) - 1  # the branches' entries sit behind
    start = session.num_committed
    held = {(b.position, b.tokens[0]) for b in session.outcomes}
    token = next(t for t in range(320) if (start + 1, t) not in held and t != session.tokens[start + 1])
    engine.sync(session, [session.tokens[start], token])
    assert session.num_outcome_hits == 0 and session.tokens[start + 1] == token
    assert session.cache_length == start + 1 and not session.outcomes
    assert_cache_is_a_fresh_prefill(model, session)
