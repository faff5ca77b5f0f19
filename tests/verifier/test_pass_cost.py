"""The pass cost model, round plans, and the scheduler's gathering window."""
from types import SimpleNamespace

import pytest

from verifier.config import VerifierConfig
from verifier.pass_cost import COST_WINDOW, PassCostModel, cut_draft
from verifier.requests import RoundPlan, ServerRequest
from verifier.scheduler import Scheduler


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


def test_unknown_until_two_sizes_and_an_outlier_fades():
    cost = PassCostModel()
    assert cost.estimate(1, 4) is None
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


def test_one_stalled_pass_of_a_size_seldom_run_is_left_out_of_the_fit():
    """Mostly 2-token passes and a few 8-token ones, one of which stalled (a cold kernel): the
    8-token estimate follows the typical 8-token pass, not the stall."""
    cost = PassCostModel()
    for i in range(24):
        cost.observe(1, 2, 0.006 + 0.0002 * (i % 3))
    for seconds in (0.048, 0.009, 0.0095, 0.009):
        cost.observe(1, 8, seconds)
    assert cost.estimate(1, 8) == pytest.approx(0.009, abs=1e-3)
    assert cost.estimate(1, 2) == pytest.approx(0.0062, abs=5e-4)


def test_what_skipped_padding_still_costs_is_fitted_and_weighed():
    """60 ms + 10 ms a computed token + 4 ms a padded slot (attention, norms and rotary still
    run on rows x widest): the fit recovers it from ragged and even passes alike."""
    cost = PassCostModel()
    for widths in ([1], [6], [1, 1], [6, 6], [6, 1], [8] * 8, [6, 1, 1, 6, 1, 1, 6, 1], [3, 1, 2, 1]):
        padding = len(widths) * max(widths) - sum(widths)
        cost.observe(len(widths), sum(widths) / len(widths), 0.06 + 0.01 * sum(widths) + 0.004 * padding, padding)
    assert cost.coefficients == pytest.approx((0.06, 0.01, 0.0), abs=1e-6)
    assert cost.padding_cost == pytest.approx(0.004, abs=1e-6)


def test_a_pass_beside_a_drafting_drafter_is_fitted_apart_and_a_one_size_window_keeps_its_fit():
    """Passes while the drafter drafts on the same cores cost 15 ms more: the fit says so. A
    window of passes all of one size (a request decoded alone for long) keeps the last fit."""
    cost = PassCostModel()
    for rows, width, is_drafting in ((1, 1, False), (1, 9, True), (2, 9, True), (1, 3, False), (2, 1, True)):
        cost.observe(rows, width, 0.04 + 0.002 * rows * width + 0.003 * rows + 0.015 * is_drafting, 0, is_drafting)
    assert cost.drafting_cost == pytest.approx(0.015, abs=1e-6)
    assert cost.estimate(1, 9, is_drafting=True) - cost.estimate(1, 9) == pytest.approx(0.015, abs=1e-6)
    for _ in range(COST_WINDOW):
        cost.observe(1, 1, 0.045)
    assert cost.estimate(1, 1) == pytest.approx(0.045, abs=2e-3)
    assert cost.estimate(1, 9) > cost.estimate(1, 1)  # the slope of the last fit with a spread


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


def scheduler_with(num_requests, **config):
    scheduler = Scheduler(VerifierConfig(**config))
    for n in range(num_requests):
        scheduler.add(ServerRequest(f"r{n}", b"c", SimpleNamespace(tokens=[5, 6]), 64, frozenset(), False))
    return scheduler


def test_a_part_batch_waits_briefly_for_a_request_whose_verdict_just_went_out():
    scheduler = scheduler_with(2)
    scheduler.clock = lambda: 1000.0  # an injected clock: no real time passes in this test
    ready, straggler = scheduler.requests["r0"], scheduler.requests["r1"]
    straggler.waiting_since = 1000.0 - 0.001
    assert not scheduler.is_gathering([ready], is_drafter_absent=False)  # no pass timed yet: no wait
    one_token = 0.02
    scheduler.speculation.passes.observe(1, 1, one_token)
    scheduler.speculation.passes.observe(1, 4, 0.03)
    straggler.waiting_since = 1000.0 - 0.49 * one_token  # within half a one-token pass
    assert scheduler.is_gathering([ready], is_drafter_absent=False)
    assert not scheduler.is_gathering([ready], is_drafter_absent=True)
    straggler.waiting_since = 1000.0 - 0.51 * one_token  # past it
    assert not scheduler.is_gathering([ready], is_drafter_absent=False)
