"""The drafter's draft-length policy: hand-computed rules, and the gate in a real draft engine."""
import pytest

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from drafter.policy import DraftPolicy
from tests.conftest import TINY_VOCAB, tiny_model

PROMPT = [7, 19, 23, 7, 19, 60, 61, 2, 44, 7, 19]


def test_adapt_learns_from_verified_tokens_only():
    policy = DraftPolicy(DrafterConfig(gamma=8, min_gamma=2))
    state = policy.new_state()
    assert state.draft_length == 8
    policy.adapt(state, 3, 1)  # a rejection after one accepted token
    assert state.draft_length == 2  # one more than accepted, at least min_gamma
    policy.adapt(state, 0, 0)  # the verifier cut the whole trunk: no evidence
    assert state.draft_length == 2
    policy.adapt(state, 2, 2)  # all verified tokens accepted (even if the trunk was longer)
    assert state.draft_length == 4
    policy.adapt(state, 4, 4)
    policy.adapt(state, 6, 6)
    assert state.draft_length == 8  # capped at gamma


def test_goal_and_trunk_cap_follow_the_gate_and_the_budget():
    policy = DraftPolicy(DrafterConfig(gamma=6, max_trunk=10, min_agreement=0.5))
    state = policy.new_state()
    assert (policy.goal(state, None), policy.goal(state, 3), policy.goal(state, 0)) == (6, 3, 1)
    assert (policy.trunk_cap(state, None), policy.trunk_cap(state, 4)) == (10, 4)
    for _ in range(10):
        policy.observe_first_token(state, False)
    assert state.agreement == pytest.approx(0.9 ** 10) and policy.is_gated(state)
    assert (policy.goal(state, 5), policy.trunk_cap(state, 5)) == (1, 0)


def test_a_disagreeing_draft_is_gated_until_it_agrees_again():
    drafter = DraftEngine(tiny_model("llama"), DrafterConfig(gamma=4, window=2, ngram=3, min_agreement=0.5))
    session = drafter.open(PROMPT)
    for _ in range(10):  # the target keeps choosing something else than the draft's guess
        drafter.draft(session)
        guess = session.tokens[session.num_committed]
        drafter.sync(session, [(guess + 1) % TINY_VOCAB])
    assert session.policy.agreement < 0.5
    block = drafter.draft(session)
    assert block.trunk == [] and session.num_drafted == 1  # one guess drafted, none sent
    while drafter.policy.is_gated(session.policy):  # the draft's guesses come true: measured though unsent
        drafter.sync(session, session.tokens[session.num_committed :][:1])
        drafter.draft(session)
    assert len(drafter.draft(session).trunk) >= 1
