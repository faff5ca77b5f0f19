"""The solo switch (verifier.solo): the faster of speculating and the target alone, measured."""
from types import SimpleNamespace

import pytest

from verifier.config import VerifierConfig
from verifier.requests import ServerRequest
from verifier.scheduler import Scheduler
from verifier.solo import (
    CLEAR_LOSS_ROUNDS, EXPLORATION_BUDGET, MARGIN, MAX_RETRY_AFTER, RETIME_SOLO_AFTER, RETRY_SOLO_AFTER, RETRY_SPECULATION_AFTER,
    SOLO_TIMING_BUDGET, TRIAL_ROUNDS,
    SoloSwitch, StintRate, load_bucket, retry_gap, solo_gap,
)


def make_request(request_id: str = "a") -> ServerRequest:
    return ServerRequest(request_id, b"c", SimpleNamespace(tokens=[5, 6]), 64, frozenset(), False, is_on_drafter=True)


def run(switch: SoloSwitch, rounds: int, speculating: float, solo: float, load: int = 1) -> list[bool]:
    """`rounds` rounds at the given tokens/s for each mode; the modes they ran in."""
    modes = []
    for _ in range(rounds):
        modes.append(switch.is_solo)
        switch.record(1, 1.0 / (solo if switch.is_solo else speculating), load)
    return modes


def test_solo_is_timed_once_then_the_faster_mode_stays():
    switch = SoloSwitch()
    modes = run(switch, 2 * TRIAL_ROUNDS, speculating=25.0, solo=20.0)
    assert modes == [False] * TRIAL_ROUNDS + [True] * TRIAL_ROUNDS  # one trial of solo
    assert not switch.is_solo  # it lost: speculation is back
    gap = solo_gap(25.0, 20.0)
    assert RETIME_SOLO_AFTER < gap < RETRY_SOLO_AFTER
    assert not any(run(switch, gap - 1, speculating=25.0, solo=20.0))
    assert run(switch, 2, speculating=25.0, solo=20.0)[-1]  # solo is timed again, its rate may have moved


def test_speculation_that_loses_is_retried_less_often():
    switch = SoloSwitch()
    modes = run(switch, TRIAL_ROUNDS + TRIAL_ROUNDS - 1, speculating=16.0, solo=20.0)
    assert modes == [False] * TRIAL_ROUNDS + [True] * (TRIAL_ROUNDS - 1) and switch.is_solo
    assert switch.retry_speculation_after == RETRY_SPECULATION_AFTER  # solo's own trial is not over yet
    run(switch, 1, speculating=16.0, solo=20.0)
    # the first stint ended only to time solo; solo timed over its trial and faster, it was a lost trial
    first_gap = retry_gap(TRIAL_ROUNDS, 16.0, 20.0, RETRY_SPECULATION_AFTER)  # in proportion to its cost
    assert switch.retry_speculation_after == first_gap >= 2 * RETRY_SPECULATION_AFTER
    modes = run(switch, first_gap - TRIAL_ROUNDS + TRIAL_ROUNDS, speculating=16.0, solo=20.0)
    assert modes == [True] * (first_gap - TRIAL_ROUNDS) + [False] * TRIAL_ROUNDS  # a trial of speculation, lost
    second_gap = retry_gap(TRIAL_ROUNDS, 16.0, 20.0, first_gap)
    assert switch.is_solo and switch.retry_speculation_after == second_gap == 2 * first_gap  # twice the wait
    for _ in range(8):
        run(switch, switch.retry_speculation_after + TRIAL_ROUNDS, speculating=16.0, solo=20.0)
    assert switch.retry_speculation_after == MAX_RETRY_AFTER  # bounded: it is always tried again


def rounds_until_switch(switch: SoloSwitch, speculating: float, solo: float, load: int = 1) -> int:
    for rounds in range(1, 10_000):
        if switch.record(1, 1.0 / (solo if switch.is_solo else speculating), load):
            return rounds
    raise AssertionError("the mode never changed")


def test_speculation_that_wins_its_retry_stays_and_resets_the_backoff():
    switch = SoloSwitch()
    assert rounds_until_switch(switch, 16.0, 20.0) == TRIAL_ROUNDS  # solo's first timing
    first_gap = retry_gap(TRIAL_ROUNDS, 16.0, 20.0, RETRY_SPECULATION_AFTER)
    assert rounds_until_switch(switch, 16.0, 20.0) == first_gap  # solo won; speculation retried
    assert rounds_until_switch(switch, 16.0, 20.0) == TRIAL_ROUNDS and switch.is_solo  # and lost
    assert rounds_until_switch(switch, 16.0, 20.0) == retry_gap(TRIAL_ROUNDS, 16.0, 20.0, first_gap)
    assert not any(run(switch, 3 * TRIAL_ROUNDS, speculating=40.0, solo=20.0))  # the draft pays again here
    assert switch.retry_speculation_after == RETRY_SPECULATION_AFTER
    assert rounds_until_switch(switch, 5.0, 20.0) <= 2  # and once it loses, solo at once


def test_the_first_round_of_a_stint_pays_for_the_switch_and_is_not_counted():
    switch = SoloSwitch()
    switch.record(1, 100.0)  # a slow first round (the drafter catching up)
    for _ in range(TRIAL_ROUNDS - 2):
        switch.record(3, 0.1)
    assert abs(switch.rate(False) - 30.0) < 1e-9


def test_a_disabled_switch_never_goes_solo():
    switch = SoloSwitch(is_enabled=False)
    assert not any(run(switch, 4 * TRIAL_ROUNDS, speculating=1.0, solo=100.0))


def test_solo_means_no_request_wants_a_draft():
    scheduler = Scheduler(VerifierConfig())
    request = make_request()
    scheduler.add(request)
    assert scheduler.wants_draft(request) and request.wants_draft and not scheduler.is_drafter_idle
    scheduler.solo.is_solo = True
    assert not scheduler.wants_draft(request)
    newcomer = make_request("b")
    scheduler.add(newcomer)
    assert not newcomer.wants_draft  # admitted solo: no round waits for its first draft
    request.wants_draft = False
    assert scheduler.is_drafter_idle  # every request rests: the drafter's cores are free
    assert scheduler.is_ready(newcomer, now=newcomer.waiting_since, is_drafter_absent=False)


def test_a_clear_loser_ends_its_trial_early():
    switch = SoloSwitch()
    assert rounds_until_switch(switch, 40.0, 10.0) == TRIAL_ROUNDS  # solo's first trial: nothing to compare yet
    assert rounds_until_switch(switch, 40.0, 10.0) == CLEAR_LOSS_ROUNDS  # speculation 4x faster: solo ends early
    assert not switch.is_solo


def test_taking_turns_the_drafter_is_idle_once_every_wanted_draft_is_in_hand():
    from protocol.messages import Draft
    from verifier.engine import TargetSession

    scheduler = Scheduler(VerifierConfig())
    request = ServerRequest("a", b"c", TargetSession([5, 6, 7], 3, cache=None, max_context=100), 64, frozenset(),
                            False, is_on_drafter=True)
    scheduler.add(request)
    assert not scheduler.holds_every_draft  # the drafter is drafting its first block
    request.offer(Draft(request_id="a", base_length=3, base_tail=[6, 7], trunk=[1, 2], branches=[],
                        drafted_ahead=False))
    assert scheduler.holds_every_draft  # nothing left to draft: a pass may take its cores
    resting = make_request("b")
    scheduler.solo.is_enabled = False  # load 2, never timed: it would go solo (test_a_load_above_one_...)
    scheduler.add(resting)
    resting.wants_draft = False
    assert scheduler.holds_every_draft  # a request that rests waits for no draft


def test_a_request_the_drafter_was_not_told_of_keeps_it_idle():
    scheduler = Scheduler(VerifierConfig())
    request = make_request()
    request.is_on_drafter = False  # admitted in a burst: prefilled before the drafter hears of it
    scheduler.add(request)
    assert request.wants_draft and scheduler.is_drafter_idle and scheduler.holds_every_draft
    request.is_on_drafter = True
    assert not scheduler.is_drafter_idle and not scheduler.holds_every_draft


def test_a_load_above_one_never_timed_is_admitted_solo():
    scheduler = Scheduler(VerifierConfig())
    first, second = make_request("a"), make_request("b")
    assert not scheduler.add(first) and first.wants_draft  # alone: speculation first, as ever
    assert scheduler.add(second) and scheduler.solo.is_solo  # two at once: the mode changed on admission
    assert not second.wants_draft and not scheduler.wants_draft(first)
    assert not scheduler.add(make_request("c"))  # load 3, solo too: no change


def test_load_buckets():
    assert [load_bucket(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 1, 2, 4, 4, 8, 8, 16, 16, 32]


def test_a_lost_trial_waits_in_proportion_to_what_it_cost():
    # 8 rounds at 3/4 of solo's rate cost 2 rounds of solo's time: the budget spreads them out
    assert retry_gap(8, 15.0, 20.0, RETRY_SPECULATION_AFTER) == round(2 / EXPLORATION_BUDGET)
    assert retry_gap(8, 19.9, 20.0, RETRY_SPECULATION_AFTER) == 2 * RETRY_SPECULATION_AFTER  # losses in a row
    assert retry_gap(8, 19.9, 20.0, 0) == RETRY_SPECULATION_AFTER  # never sooner
    assert retry_gap(8, 1.0, 20.0, MAX_RETRY_AFTER) == MAX_RETRY_AFTER  # never later


def test_rates_are_kept_apart_by_load():
    switch = SoloSwitch()
    run(switch, 2 * TRIAL_ROUNDS, speculating=30.0, solo=20.0, load=1)  # alone, speculation wins
    assert not switch.is_solo
    assert switch.rate(False, load=1) == pytest.approx(30.0) and switch.rate(True, load=1) == pytest.approx(20.0)
    assert rounds_until_switch(switch, 60.0, 160.0, load=8) == 1  # eight at once, a load never timed: solo first
    # then speculation, after a wait as many times longer as requests are open (the drafter catches up on each)
    assert rounds_until_switch(switch, 60.0, 160.0, load=8) == min(8 * RETRY_SPECULATION_AFTER, MAX_RETRY_AFTER)
    assert rounds_until_switch(switch, 60.0, 160.0, load=8) == CLEAR_LOSS_ROUNDS  # which loses clearly here
    assert switch.is_solo and switch.rate(True, load=8) == pytest.approx(160.0)
    assert switch.rate(True, load=1) == pytest.approx(20.0) and switch.rate(False, load=1) == pytest.approx(30.0)
    assert switch.record(1, 1 / 20.0, load=1) and not switch.is_solo  # back to one: speculation was faster there
    assert switch.record(1, 1 / 30.0, load=7) and switch.is_solo  # and at eight solo was: no trial needed



def test_one_hiccup_in_a_solo_stint_does_not_hand_the_request_to_a_slower_speculation():
    """The demo's log: solo at 37 ms a token, then one 137 ms pass (the machine's), and the
    request went back to speculating at 0.7x solo's rate for all its remaining rounds."""
    switch = SoloSwitch()
    run(switch, TRIAL_ROUNDS + 10, speculating=19.3, solo=27.0)  # speculation timed, then solo
    assert switch.is_solo
    rounds = [1 / 27.0] * 3 + [0.137] + [1 / 27.0] * 3
    assert not any(switch.record(1, seconds) for seconds in rounds) and switch.is_solo
    assert switch.rate(True) > MARGIN * switch.rate(False)
    uncapped = StintRate()  # the same solo rounds counted in full: that hiccup alone would have switched
    for seconds in [1 / 27.0] * 9 + rounds[:4]:  # up to the hiccup, where it would have been judged
        uncapped.observe(1, seconds)
    assert 19.3 > MARGIN * uncapped.per_second


def test_a_lasting_solo_slowdown_still_counts_and_speculation_takes_over():
    switch = SoloSwitch()
    run(switch, TRIAL_ROUNDS + 10, speculating=19.3, solo=27.0)
    assert switch.is_solo
    rounds = 0
    while switch.is_solo:  # another job takes the cores: solo's rounds take 4x as long from now on
        switch.record(1, 4 / 27.0)
        rounds += 1
    assert rounds <= 8


def test_a_long_wait_for_a_draft_counts_in_full_against_speculation():
    rate = StintRate(caps_hiccups=False)
    for seconds in [0.05] * 8 + [2.0]:  # a draft timeout is speculation's real cost
        rate.observe(3, seconds)
    capped = StintRate(caps_hiccups=True)
    for seconds in [0.05] * 8 + [2.0]:
        capped.observe(3, seconds)
    assert capped.per_second > 2 * rate.per_second  # what a cap would have hidden
    switch = SoloSwitch()
    for seconds in [0.05] * 5 + [2.0]:  # within speculation's first trial, its rounds as they were
        switch.record(3, seconds)
    expected = StintRate()
    for seconds in [0.05] * 4 + [2.0]:  # the first round of a stint is not counted
        expected.observe(3, seconds)
    assert not switch.is_solo and switch.rate(False) == pytest.approx(expected.per_second)


def test_solo_is_timed_again_sooner_the_closer_the_race():
    # timing solo for a trial costs TRIAL_ROUNDS * (1 - r/s) rounds: the wait keeps it within budget
    assert solo_gap(25.0, 20.0) == round(TRIAL_ROUNDS * 0.2 / SOLO_TIMING_BUDGET)
    assert solo_gap(21.0, 20.0) == RETIME_SOLO_AFTER  # a close race: a stale solo rate is soon replaced
    assert solo_gap(60.0, 20.0) == RETRY_SOLO_AFTER  # speculation far ahead: solo seldom
    assert solo_gap(None, 20.0) == solo_gap(25.0, None) == RETRY_SOLO_AFTER
    switch = SoloSwitch()
    run(switch, 2 * TRIAL_ROUNDS, speculating=21.0, solo=20.0)  # speculation won, narrowly
    assert not switch.is_solo
    assert rounds_until_switch(switch, 21.0, 20.0) == RETIME_SOLO_AFTER


def test_the_first_stint_is_judged_on_solo_s_whole_trial_not_its_first_round():
    """The demo's log: solo's first counted round (21.9 tok/s, a slow one) was below the first
    stint's 22.7, so that stint was never judged lost, and speculation came back after 16 rounds
    against a solo that settled at 29 tok/s."""
    switch = SoloSwitch()
    run(switch, TRIAL_ROUNDS, speculating=22.7, solo=29.0)
    assert switch.is_solo
    switch.record(1, 1.0)  # the stint's first round: not counted
    switch.record(1, 1 / 21.9)
    run(switch, TRIAL_ROUNDS - 2, speculating=22.7, solo=29.0)
    assert switch.retry_speculation_after > RETRY_SPECULATION_AFTER
    assert rounds_until_switch(switch, 22.7, 29.0) == switch.retry_speculation_after - TRIAL_ROUNDS
