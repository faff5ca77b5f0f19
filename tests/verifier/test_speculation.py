"""The speculation decision (verifier.speculation): behaviour under fixed cost models and scripted
agreement. Each test asserts what is chosen, never a round count of a tuning."""
import logging
from types import SimpleNamespace

import pytest

from verifier.config import VerifierConfig
from verifier.requests import ServerRequest
from verifier.scheduler import Scheduler
from verifier.acceptance import HISTORY, AgreementTrace, OfferedLookups
from verifier.pass_cost import DraftWait
from verifier.speculation import MIN_TIMED, PRIOR_POSITIONS, RETIME_AFTER, SpeculationDecision

GAMMA = 8
CPU = (0.04, 0.004, 0.002)  # a + b*rows*width + d*rows: a small model on two CPU cores
FLAT = (0.004, 0.00001, 0.0)  # a large model on a GPU: width costs almost nothing


def decision(costs=CPU, wait_per_token=0.005, max_length=GAMMA, skips_padding=False) -> SpeculationDecision:
    """Costs fitted exactly: passes of several sizes, drafts waited for at several lengths."""
    a, b, d = costs
    chosen = SpeculationDecision(skips_padding)
    chosen.reset_drafter(max_length)
    for rows in (1, 2, 8):
        for width in (1, 3, 9):
            chosen.observe_pass([width] * rows, a + b * rows * width + d * rows, is_drafting=width > 1)
    for _ in range(5):
        for length in (0, 2, 8):
            chosen.wait.observe(length, wait_per_token * length)
    return chosen


def agree(chosen: SpeculationDecision, request_id: str, pattern: list[int], num_positions: int) -> None:
    """Scripted agreement: `pattern` repeated over the next `num_positions` committed positions."""
    trace = chosen.traces[request_id]
    start = trace.end if trace.end is not None else 100
    chosen.observe_agreement(request_id, start, [pattern[i % len(pattern)] for i in range(num_positions)])


def test_expected_accepted_counts_runs_and_open_runs_only_where_they_reach():
    trace = AgreementTrace()
    trace.add(10, [1, 1, 0, 1, 1, 1, 0, 0, 1, 1])  # runs 2 1 0 3 2 1 0 0, then an open 2 1
    expected = trace.expected_accepted(4)
    assert expected[0] == 0
    assert expected[1] == pytest.approx(7 / 10)
    assert expected[2] == pytest.approx(10 / 9)  # the open run of 1 says nothing about k = 2
    trace.add(30, [1])  # a gap: the trace starts afresh
    assert list(trace.bits) == [1]


def test_a_draft_that_never_agrees_rests_and_speculation_returns_with_agreement():
    chosen = decision()
    chosen.open("r")
    agree(chosen, "r", [0], HISTORY)
    assert chosen.choose(["r"]) == [0]
    agree(chosen, "r", [1], HISTORY // 2)  # agreement returns: half the window agrees now
    assert chosen.choose(["r"])[0] > 0


def test_one_that_always_agrees_gets_the_longest_draft():
    chosen = decision()
    chosen.open("r")
    agree(chosen, "r", [1], HISTORY)
    assert chosen.choose(["r"]) == [GAMMA]


def test_a_growing_batch_moves_to_shorter_drafts_where_width_costs():
    chosen = decision()
    ids = [f"r{n}" for n in range(8)]
    for request_id in ids:
        chosen.open(request_id)
        agree(chosen, request_id, [1, 1, 1, 0, 1, 1, 0, 1, 1, 0], HISTORY)  # agreement 0.7
    alone = chosen.choose(ids[:1])[0]
    batched = chosen.choose(ids)
    assert 0 < max(batched) < alone
    assert chosen.choose(ids[:1]) == [alone]


def test_where_width_is_free_a_batch_drafts_as_far_as_its_runs_reach():
    chosen = decision(FLAT, wait_per_token=0.0)
    ids = [f"r{n}" for n in range(8)]
    for request_id in ids:
        chosen.open(request_id)
        agree(chosen, request_id, [1] * 11 + [0], HISTORY)  # agreement 0.92, runs up to 11
    assert chosen.choose(ids) == [GAMMA] * 8
    alone = decision(FLAT, wait_per_token=0.0)
    alone.open("short")
    agree(alone, "short", [1, 1, 1, 0], HISTORY)  # no run past 3: past that only the prior adds a little
    assert 3 <= alone.choose(["short"])[0] < GAMMA


def test_a_slow_draft_is_not_worth_waiting_for():
    """The same agreement, but each draft token keeps the target waiting as long as a pass."""
    chosen = decision(wait_per_token=0.05)
    chosen.open("r")
    agree(chosen, "r", [1, 1, 1, 0, 1, 1, 0, 1, 1, 0], HISTORY)
    assert chosen.choose(["r"]) == [0]


def test_each_request_by_its_own_agreement():
    """Where the engine computes only each row's own tokens (kvcache.packed), a row whose draft
    never agrees drafts nothing beside one that always does."""
    chosen = decision(skips_padding=True)
    chosen.open("good")
    chosen.open("bad")
    agree(chosen, "good", [1], HISTORY)
    agree(chosen, "bad", [0], HISTORY)
    good, bad = chosen.choose(["good", "bad"])
    assert good > 0 and bad == 0


def test_a_new_request_starts_from_the_latest_evidence_and_follows_its_own():
    """Nothing known at all: the coin-flip prior asks for a short draft, cheap where it is wrong.
    A later request starts from the latest trace with evidence, and a few rounds of its own
    decide."""
    chosen = decision()
    chosen.open("first")
    first = chosen.choose(["first"])[0]
    assert 0 < first < GAMMA
    agree(chosen, "first", [1], 4 * PRIOR_POSITIONS)
    assert chosen.choose(["first"])[0] > first
    chosen.open("next")
    assert chosen.choose(["next"])[0] > first  # like the text before it
    agree(chosen, "next", [0], 8 * PRIOR_POSITIONS)
    assert chosen.choose(["next"]) == [0]


def test_unmeasured_costs_alternate_the_longest_draft_and_none_until_each_was_timed_enough():
    """Rounds alternate until MIN_TIMED of each kind were timed, even once the pass costs fit:
    one slow first draft round (a cold kernel) must not switch drafting off for good."""
    chosen = SpeculationDecision()
    chosen.reset_drafter(GAMMA)
    chosen.open("r")
    agree(chosen, "r", [1], HISTORY)
    for _ in range(MIN_TIMED):
        lengths = [chosen.choose(["r"])[0] for _ in range(2)]
        assert sorted(lengths) == [0, GAMMA]
        for length in lengths:  # the first drafted round stalls, then drafts pay
            slow = length and not chosen.wait.drafted
            chosen.observe_pass([1 + length], 0.048 if slow else 0.005 + 0.0005 * length, is_drafting=length > 0)
            chosen.wait.observe(length, 0.001 * length)
    assert chosen.choose(["r"]) == [GAMMA]
    assert SpeculationDecision().choose(["r"]) == [0]  # no drafter: nothing to ask for


def test_a_mistaken_pair_is_flagged_once_and_a_new_drafter_afresh(caplog):
    chosen = decision()
    chosen.open("r")
    with caplog.at_level(logging.WARNING, logger="ouroboros.verifier"):
        agree(chosen, "r", [0], 200)
        agree(chosen, "r", [0], 200)
    assert len(caplog.records) == 1 and "agreed with the target on 0 of its first" in caplog.text
    chosen.reset_drafter(GAMMA)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ouroboros.verifier"):
        agree(chosen, "r", [1, 0, 0], 200)  # a weak draft, not a mistaken one
    assert not caplog.records


def test_the_scheduler_waits_only_for_drafts_asked_for():
    scheduler = Scheduler(VerifierConfig())
    request = ServerRequest("r", b"c", SimpleNamespace(tokens=[5, 6]), 64, frozenset(), False)
    scheduler.add(request)
    scheduler.clock = lambda: 1000.0  # an injected clock: the draft timeout never runs out here
    request.waiting_since, request.is_on_drafter = 1000.0, True
    request.draft_length = 4
    assert scheduler.pick_ready(is_drafter_absent=False) == []  # its draft is coming
    assert not scheduler.is_drafter_idle
    request.draft_length = 0
    assert scheduler.pick_ready(is_drafter_absent=False) == [request]  # none is coming
    assert scheduler.is_drafter_idle
    request.num_output = 63  # one token left: the target's own, no draft can help
    assert scheduler.next_lengths([request]) == [0]


def test_one_stalled_round_does_not_stop_drafting_and_a_new_drafter_is_timed_afresh():
    chosen = decision()
    chosen.open("r")
    agree(chosen, "r", [1], HISTORY)
    chosen.wait.observe(8, 2.0)  # a draft that waited out the timeout once (a drafter restarting)
    assert chosen.choose(["r"]) == [GAMMA]
    chosen.reset_drafter(GAMMA)
    assert chosen.wait.estimate(GAMMA) is None  # unknown again: measured before it is judged


def test_draft_waits_not_timed_for_long_are_timed_again_once():
    """Drafts once cost too much waiting: rounds go without, and after RETIME_AFTER of them one
    round drafts again (at no extra wait drafting would pay), to see whether that changed."""
    chosen = decision(wait_per_token=0.05)
    chosen.open("r")
    agree(chosen, "r", [1, 1, 1, 0, 1, 1, 0, 1, 1, 0], HISTORY)
    lengths = [chosen.choose(["r"])[0] for _ in range(2 * RETIME_AFTER)]
    assert lengths.count(0) == 2 * RETIME_AFTER - 2 and lengths[RETIME_AFTER - 1] > 0


def test_where_the_verifiers_own_lookup_already_gets_the_tokens_a_draft_adds_nothing():
    """Text the root lookup copies (prose quoting its prompt): a draft that agrees half the
    time would mostly re-find the same tokens, so waiting for it does not pay; where the
    lookup finds nothing, the same draft is worth its wait."""
    chosen = decision()
    for request_id, matched in (("copied", 4), ("fresh", 0)):
        chosen.open(request_id)
        agree(chosen, request_id, [1, 1, 0, 1, 0, 1, 1, 1, 0, 0], HISTORY)
        for p in range(100, 100 + HISTORY, 2):
            chosen.observe_lookup(request_id, p, matched)
    assert chosen.choose(["copied"]) == [0]
    assert chosen.choose(["fresh"])[0] > 0


def test_where_one_chain_is_verified_the_lookup_counts_only_in_rounds_without_a_draft():
    """vLLM verifies one path: a k-token trunk accepts min(run, k) whatever the lookup had, a
    round without a draft the lookup's m; side by side (our verifier) the better of the two."""
    trace = AgreementTrace()
    trace.add(10, [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0])  # runs from 10: 1, from 18: 3
    trace.lookups.extend([(10, 4), (18, 0)])
    assert trace.expected_committed(3) == [2.0, 2.5, 3.0, 3.5]  # max(min(run, k), m) over (1, 4), (3, 0)
    assert trace.expected_committed(3, is_chain=True) == [2.0, 1.0, 1.5, 2.0]
    chain = decision()
    chain.is_chain = True
    for request_id, matched in (("copied", 4), ("fresh", 0)):
        chain.open(request_id)
        agree(chain, request_id, [1, 1, 0, 1, 0, 1, 1, 1, 0, 0], HISTORY)
        for p in range(100, 100 + HISTORY, 2):
            chain.observe_lookup(request_id, p, matched)
    assert chain.choose(["copied"]) == [0]  # the lookup, not a draft that agrees less than it
    assert chain.choose(["fresh"])[0] > 0


def test_an_offered_lookup_is_judged_once_the_text_decides_it():
    offered = OfferedLookups()
    offered.offer(3, [7, 8, 9])
    offered.offer(5, [1, 2])
    assert offered.judge([0, 0, 0, 7, 8]) == []  # 7, 8 right so far; 9 not yet committed
    assert offered.judge([0, 0, 0, 7, 8, 1, 5]) == [(3, 2), (5, 1)]  # 8 then 1: the first's third token was wrong
    assert offered.judge([0, 0, 0, 7, 8, 1, 5, 6]) == []  # each judged once
    offered.offer(8, [4])
    assert offered.judge([0, 0, 0, 7, 8, 1, 5, 6, 4]) == [(8, 1)]


def test_a_draft_wait_is_a_fixed_cost_plus_a_cost_per_token():
    """Any draft costs the drafter a pass or so, then each token its share: the line through the
    waits at each length says so, and one stall among many rounds does not move it."""
    wait = DraftWait()
    for _ in range(4):
        for length in (1, 2, 8):
            wait.observe(length, 0.010 + 0.002 * length)
        wait.observe(0, 0.0001)
    wait.observe(8, 2.0)
    assert wait.estimate(4) == pytest.approx(0.018, abs=1e-6)
    assert wait.estimate(0) == pytest.approx(0.0001)


def test_drafts_drafted_ahead_cost_their_share_of_the_wait_and_only_after_a_trunk():
    """w(k) = h * w_ahead + (1 - h) * w_fresh(k): h is the share of rounds that could come ahead
    (their round before verified a trunk) that did; a round after one with no trunk waits w_fresh."""
    wait = DraftWait()
    for _ in range(4):
        for length in (2, 8):
            wait.observe(length, 0.010 + 0.005 * length)  # drafted on the verdict
        wait.observe(0, 0.0005)
    for was_ahead in (True, True, True, False):
        wait.observe(8, 0.001 if was_ahead else 0.050, could_be_ahead=True, was_ahead=was_ahead)
    assert wait.hit_rate == pytest.approx(0.75)
    fresh = 0.010 + 0.005 * 4
    assert wait.estimate(4) == pytest.approx(fresh, abs=1e-6)  # after a round with no trunk
    assert wait.estimate(4, can_be_ahead=True) == pytest.approx(0.75 * 0.001 + 0.25 * fresh, abs=1e-6)
    assert wait.estimate(0, can_be_ahead=True) == pytest.approx(0.0005)


def test_a_request_whose_drafts_come_ahead_keeps_drafting_where_fresh_drafts_would_not_pay():
    """Fresh drafts that cost more than they commit send a request to the target alone; with the
    speculation cache answering most verdicts at once, the same request drafts on after a trunk,
    and a round after one with no trunk (nothing to pre-draft for) still sees the fresh cost."""
    chosen = decision(wait_per_token=0.030)  # a slow drafter: 30 ms a draft token on the verdict
    chosen.open("r")
    agree(chosen, "r", [1, 1, 1, 0], HISTORY)
    assert chosen.choose(["r"], verified_trunk=[True]) == [0]  # nothing came ahead yet
    for _ in range(8):
        chosen.wait.observe(GAMMA, 0.001, could_be_ahead=True, was_ahead=True)
    assert chosen.choose(["r"], verified_trunk=[True])[0] > 0
    assert chosen.choose(["r"], verified_trunk=[False]) == [0]
