"""The pass cost model, the pass width that pays, draft yields, and the scheduler that uses them."""
from types import SimpleNamespace

import pytest

from verifier.config import VerifierConfig
from verifier.engine import VerifyResult
from verifier.pass_cost import (
    COST_WINDOW, EXPLORE_AFTER, YIELD_SMOOTHING, PassCostModel, best_width, best_widths, cut_draft,
)
from verifier.requests import RoundPlan, ServerRequest
from verifier.scheduler import UNMEASURED_PASS_S, Scheduler


def model(points: dict[tuple[int, int], float]) -> PassCostModel:
    """Passes timed at (rows, width) -> seconds."""
    cost = PassCostModel()
    for (rows, width), seconds in points.items():
        cost.observe(rows, width, seconds)
    return cost


def line(a: float, b: float, d: float) -> PassCostModel:
    """Passes timed exactly on c(B, w) = a + b*B*w + d*B."""
    return model({(rows, width): a + b * rows * width + d * rows for rows in (1, 2, 8) for width in (1, 3, 6)})


def test_the_fit_recovers_token_and_row_costs():
    cost = line(0.06, 0.01, 0.008)
    assert cost.coefficients == pytest.approx((0.06, 0.01, 0.008), abs=1e-6)
    assert cost.estimate(4, 2) == pytest.approx(0.06 + 0.08 + 0.032, abs=1e-6)


def test_one_row_only_still_fits_and_predicts():
    """Every pass had one row: the row term is not identifiable, the predictions still are."""
    cost = model({(1, 1): 0.07, (1, 3): 0.09, (1, 6): 0.12})
    assert cost.estimate(1, 3) == pytest.approx(0.09, abs=2e-3)
    assert cost.break_even_yield(1) == pytest.approx(0.01 / 0.07, rel=0.05)


def test_unknown_until_two_sizes_and_an_outlier_fades():
    cost = PassCostModel()
    assert cost.estimate(1, 4) is None and cost.break_even_yield(1) is None
    cost.observe(1, 4, 0.1)
    cost.observe(1, 4, 0.1)
    assert cost.estimate(1, 5) is None  # one size: no slope yet
    cost.observe(8, 1, 0.9)  # a cold first pass of 8 rows
    assert cost.estimate(8, 1) > 0.5
    for _ in range(COST_WINDOW):
        cost.observe(1, 1, 0.07)
        cost.observe(1, 16, 0.22)
        cost.observe(8, 1, 0.20)
    assert cost.estimate(8, 1) == pytest.approx(0.20, abs=1e-3)  # the outlier left the window
    assert cost.estimate(0, 0) > 0  # never zero or negative


def test_break_even_yield_grows_with_the_batch():
    """b = 10 ms a token, 60 ms fixed, 8 ms a row: one row pays from 10/78 = 0.13, eight rows
    from 80/204 = 0.39 (a token is cheap next to a one-token pass, dear next to a row's share)."""
    cost = line(0.06, 0.01, 0.008)
    assert cost.break_even_yield(1) == pytest.approx(0.01 / 0.078, rel=1e-3)
    assert cost.break_even_yield(8) == pytest.approx(0.08 / 0.204, rel=1e-3)


def test_flat_costs_verify_everything():
    """A GPU: a wider pass costs nothing more, so every draft token is worth it."""
    assert best_width([5, 3, 0], [0.1, 0.1, 0.1], line(0.01, 1e-6, 1e-5)) == 6


def test_steep_costs_and_low_yield_verify_roots_only():
    """2 rows at 60 ms + 10 ms per padded token: width 1 commits 2 tokens in 80 ms (25/s);
    width 6 commits 2 + 0.1*5*2 = 3 in 180 ms (16.7/s)."""
    cost = line(0.06, 0.01, 0.0)
    assert best_width([5, 5], [0.1, 0.1], cost) == 1
    # yield 0.9: width 6 commits 2 + 0.9*10 = 11 in 180 ms (61/s) > 25/s
    assert best_width([5, 5], [0.9, 0.9], cost) == 6


def test_intermediate_width_when_one_row_has_a_long_draft():
    """Row A drafts 2 tokens at yield 1, row B 8 tokens at yield 0.05: padding to 9 would
    cost every row 9 slots, so the width stops at A's 3, or at 1 when tokens are dear."""
    proportional = line(0.0, 0.01, 0.0)  # 10 ms per padded token, nothing fixed
    # w=1: 2/0.02 = 100/s; w=3: (2 + 2 + 0.1)/0.06 = 68/s; w=9: (2 + 2 + 0.4)/0.18 = 24/s
    assert best_width([2, 8], [1.0, 0.05], proportional) == 1
    fixed_base = line(0.09, 0.005, 0.0)  # 90 ms fixed + 5 ms per padded token
    # w=1: 2/0.10 = 20/s; w=3: 4.1/0.12 = 34/s; w=9: 4.4/0.18 = 24/s
    assert best_width([2, 8], [1.0, 0.05], fixed_base) == 3


def test_unknown_costs_verify_everything():
    assert best_width([4, 2], [0.0, 0.0], PassCostModel()) == 5
    assert best_widths([4, 2], [0.0, 0.0], PassCostModel(), skips_padding=True) == [5, 3]


def test_where_padding_is_skipped_each_row_pays_for_its_own_draft_alone():
    """Row A drafts 5 tokens at yield 0.9, row B 5 at yield 0.05; 60 ms + 10 ms a computed token.
    Padded, both rows compute the common width: 6 commits 2 + 4.5 + 0.25 = 6.75 in 180 ms
    (37.5/s), 1 commits 2 in 80 ms (25/s). Skipping padding, B cut to its root: A computes 6
    and B 1, a mean width of 3.5: 2 + 4.5 = 6.5 in 130 ms (50/s)."""
    cost = line(0.06, 0.01, 0.0)
    assert best_widths([5, 5], [0.9, 0.05], cost) == [6, 6]
    assert best_widths([5, 5], [0.9, 0.05], cost, skips_padding=True) == [6, 1]
    assert best_widths([5, 5], [0.9, 0.9], cost, skips_padding=True) == [6, 6]
    assert best_widths([5, 5], [0.05, 0.05], cost, skips_padding=True) == [1, 1]
    assert best_widths([2, 8], [1.0, 0.05], line(0.09, 0.005, 0.0), skips_padding=True) == [3, 1]


def test_a_pass_that_skips_padding_is_timed_at_its_mean_width():
    scheduler = scheduler_with(2)
    batch = list(scheduler.requests.values())
    scheduler.record_pass(batch, [6, 1], 0.1)
    assert scheduler.pass_cost.samples[-1] == (2, 6, 0.1, 0)  # padded: both rows computed 6
    scheduler.skips_padding = True
    scheduler.record_pass(batch, [6, 1], 0.1)
    assert scheduler.pass_cost.samples[-1] == (2, 3.5, 0.1, 5)  # and 5 padded slots still cost something


def test_what_skipped_padding_still_costs_is_fitted_and_weighed():
    """60 ms + 10 ms a computed token + 4 ms a padded slot (attention, norms and rotary still
    run on rows x widest): the fit recovers it from ragged and even passes alike."""
    cost = PassCostModel()
    for widths in ([1], [6], [1, 1], [6, 6], [6, 1], [8] * 8, [6, 1, 1, 6, 1, 1, 6, 1], [3, 1, 2, 1]):
        padding = len(widths) * max(widths) - sum(widths)
        cost.observe(len(widths), sum(widths) / len(widths), 0.06 + 0.01 * sum(widths) + 0.004 * padding, padding)
    assert cost.coefficients == pytest.approx((0.06, 0.01, 0.0), abs=1e-6)
    assert cost.padding_cost == pytest.approx(0.004, abs=1e-6)
    # rows of yield 0.9 and 0.3: with padding free the poorer row goes root-only (6.5 tokens
    # in 130 ms); where a padded slot costs what a token does, both keep their drafts (8 in 180)
    free = line(0.06, 0.01, 0.0)
    assert best_widths([5, 5], [0.9, 0.3], free, skips_padding=True) == [6, 1]
    dear = model({(rows, width): 0.06 + 0.01 * rows * width for rows in (1, 2) for width in (1, 6)})
    dear.observe(2, 3.5, 0.06 + 0.01 * 7 + 0.01 * 5, 5)
    assert dear.padding_cost == pytest.approx(0.01, abs=1e-6)
    assert best_widths([5, 5], [0.9, 0.3], dear, skips_padding=True) == [6, 6]


def test_cut_draft_trunk_first_then_branch_prefixes():
    assert cut_draft([1, 2, 3], [[4, 5]], 2) == ([1, 2], [])  # branches hang after the whole trunk
    assert cut_draft([1, 2], [[4, 5], [6, 7]], 3) == ([1, 2], [[4]])
    assert cut_draft([1], [[4, 5], [6, 7]], 10) == ([1], [[4, 5], [6, 7]])
    assert cut_draft([1, 2], [[4]], 0) == ([], [])


def test_round_plan_cut_keeps_its_flags():
    plan = RoundPlan([1, 2, 3], [[4]], is_predraft=True, has_draft=True)
    assert plan.num_draft_tokens == 4
    cut = plan.cut(1)
    assert (cut.trunk, cut.branches, cut.is_predraft, cut.has_draft) == ([1], [], True, True)


def test_request_yield_is_measured_and_explored():
    request = ServerRequest("r", b"client", SimpleNamespace(tokens=[5, 6]), 64, frozenset(), False)
    request.record_yield(num_verified=5, num_accepted=0)
    assert request.draft_yield < 1.0
    low = request.draft_yield
    for _ in range(EXPLORE_AFTER - 1):
        request.record_yield(num_verified=0, num_accepted=0)  # cut away or not waited for: no evidence
    assert request.planning_yield() == low and request.draft_yield == low
    request.record_yield(num_verified=0, num_accepted=0)
    assert request.planning_yield() == 1.0  # unmeasured too long: try its drafts again
    request.record_yield(num_verified=4, num_accepted=4)
    assert request.num_unverified_rounds == 0 and request.draft_yield > low


def result(appended, num_nodes, num_accepted=0):
    return VerifyResult(appended, num_accepted, 0, [appended[0]], [], num_nodes=num_nodes)


def test_a_draft_cut_away_whole_is_still_measured_on_its_first_token():
    request = ServerRequest("r", b"client", SimpleNamespace(tokens=[5, 6]), 64, frozenset(), False)
    plan = RoundPlan([7, 8], [], is_predraft=False, has_draft=True).cut(0)
    assert plan.trunk == [] and plan.dropped_first_tokens == (7,)
    request.record_round(plan, result([9], num_nodes=1))  # the target chose 9: it would have failed
    assert request.draft_yield == pytest.approx(1 - YIELD_SMOOTHING) and request.num_unverified_rounds == 0
    before = request.draft_yield
    request.record_round(plan, result([7], num_nodes=1))  # 7: its first token would have been accepted
    assert request.draft_yield > before
    branches_only = RoundPlan([], [[3, 4], [5]], is_predraft=False, has_draft=True).cut(0)
    assert branches_only.dropped_first_tokens == (3, 5)


def scheduler_with(num_requests, **config):
    scheduler = Scheduler(VerifierConfig(**config))
    for n in range(num_requests):
        scheduler.add(ServerRequest(f"r{n}", b"c", SimpleNamespace(tokens=[5, 6]), 64, frozenset(), False))
    return scheduler


def test_no_wait_for_drafts_that_do_not_pay_until_it_explores_again():
    scheduler = scheduler_with(1)
    for width, seconds in ((1, 0.07), (3, 0.09), (6, 0.12)):  # 10 ms a token on a 60 ms pass
        scheduler.pass_cost.observe(1, width, seconds)
    request = scheduler.requests["r0"]
    scheduler.clock = lambda: 1000.0  # an injected clock: the draft timeout never runs out here
    request.waiting_since = 1000.0
    assert scheduler.pick_ready(is_drafter_absent=False) == []  # yield 1: wait for its draft
    request.draft_yield = 0.05  # under the break-even 0.01 / 0.07 = 0.14
    assert scheduler.pick_ready(is_drafter_absent=False) == [request]
    request.num_unverified_rounds = EXPLORE_AFTER
    assert scheduler.pick_ready(is_drafter_absent=False) == []  # time to look at its drafts again
    request.num_unverified_rounds = 0
    assert scheduler_with(1, is_width_fitted=False).is_draft_worth_waiting(request)  # --verify-all-drafts


def test_the_verdict_tells_the_drafter_to_rest_while_drafts_do_not_pay():
    scheduler = scheduler_with(1)
    for width, seconds in ((1, 0.07), (3, 0.09), (6, 0.12)):
        scheduler.pass_cost.observe(1, width, seconds)
    request = scheduler.requests["r0"]
    assert scheduler.wants_draft(request)  # unmeasured: drafts are wanted
    request.draft_yield = 0.05
    assert not scheduler.wants_draft(request)  # under break-even: the drafter may rest
    request.num_unverified_rounds = EXPLORE_AFTER
    assert scheduler.wants_draft(request)  # time to measure its drafts again
    request.num_unverified_rounds, request.draft_yield = 0, 1.0
    request.new_tokens = [1] * 63  # one token left: the target's own, no draft can help
    assert not scheduler.wants_draft(request)
    request.new_tokens = []
    scheduler.clock = lambda: 1000.0
    request.waiting_since = 1000.0
    assert scheduler.pick_ready(is_drafter_absent=False) == []  # worth a wait for its draft...
    request.wants_draft = False
    assert scheduler.pick_ready(is_drafter_absent=False) == [request]  # ...unless the drafter was told to rest


def test_a_part_batch_waits_briefly_for_a_request_whose_verdict_just_went_out():
    scheduler = scheduler_with(2)
    scheduler.clock = lambda: 1000.0  # an injected clock: no real time passes in this test
    ready, straggler = scheduler.requests["r0"], scheduler.requests["r1"]
    straggler.waiting_since = 1000.0 - 0.49 * UNMEASURED_PASS_S  # within half a one-token pass
    assert scheduler.is_gathering([ready], is_drafter_absent=False)
    assert not scheduler.is_gathering([ready], is_drafter_absent=True)
    straggler.waiting_since = 1000.0 - 0.51 * UNMEASURED_PASS_S  # past it
    assert not scheduler.is_gathering([ready], is_drafter_absent=False)


def test_a_row_cut_to_its_root_for_long_gets_its_draft_again_to_be_measured():
    scheduler = scheduler_with(2)
    scheduler.skips_padding = True
    for rows, width, seconds in ((2, 1, 0.08), (2, 3, 0.12), (2, 6, 0.18), (1, 1, 0.07), (1, 6, 0.12)):
        scheduler.pass_cost.observe(rows, width, seconds)
    good, poor = scheduler.requests.values()
    good.draft_yield, poor.draft_yield = 0.9, 0.02
    batch = [good, poor]

    def widths():
        plans = scheduler.plan([r for r in batch], is_solo_pass=False)
        return [1 + p.num_draft_tokens for p in plans]

    for request in batch:
        request.plan_round = lambda lookup, limit: RoundPlan([1, 2, 3, 4, 5], [], is_predraft=False, has_draft=True)
    assert widths() == [6, 1]  # the poor row goes root-only; the good one is not held back
    poor.num_unverified_rounds = EXPLORE_AFTER
    assert widths() == [6, 6]  # unmeasured too long: its draft is verified again
