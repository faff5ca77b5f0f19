"""The near-zero-agreement warning: judged once, on enough evidence, afresh for a new drafter."""
import logging

from verifier.agreement import MIN_EVIDENCE, AgreementWatch


def test_warns_once_when_the_first_verified_tokens_are_almost_never_accepted(caplog):
    watch = AgreementWatch()
    with caplog.at_level(logging.WARNING, logger="ouroboros.verifier"):
        verdicts = [watch.record(6, 0) for _ in range(MIN_EVIDENCE + 4)]
    assert verdicts.count(True) == 1 and verdicts.index(True) == MIN_EVIDENCE - 1
    assert len(caplog.records) == 1 and "agreed with the target in 0 of its first 48 verified trunks" in caplog.text


def test_a_working_draft_is_not_flagged_and_a_new_drafter_is_judged_afresh():
    watch = AgreementWatch()
    assert not any(watch.record(6, 3) for _ in range(20))
    watch.reset()
    assert any(watch.record(8, 0) for _ in range(MIN_EVIDENCE))


def test_a_weak_draft_with_long_trunks_is_not_flagged():
    watch = AgreementWatch()  # its first token right one round in five, never the second: 1 of 40 tokens
    assert not any(watch.record(8, int(i % 5 == 0)) for i in range(3 * MIN_EVIDENCE))
    assert watch.is_judged and not any(watch.record(0, 0) for _ in range(5))  # rounds without a trunk: no evidence
