"""The verifier's draft bookkeeping per request: which draft fits the committed text."""
from protocol.messages import Draft
from verifier.engine import TargetSession
from verifier.requests import ServerRequest

PROMPT = [5, 6, 7, 8]


def request_with(tokens, max_context=1000):
    session = TargetSession(list(tokens), len(tokens), cache=None, max_context=max_context)  # no model here
    return ServerRequest("r", b"client", session, 64, frozenset(), False, draft_length=8)


def draft(base, tail, trunk, ahead=False):
    return Draft(request_id="r", base_length=base, base_tail=tail, trunk=trunk, branches=[],
                 drafted_ahead=ahead)


def test_a_draft_on_the_committed_end_is_taken_whole():
    request = request_with(PROMPT)
    request.offer(draft(4, [7, 8], [1, 2, 3]))
    assert request.has_draft_candidate()
    assert request.take_draft() == ([1, 2, 3], [], False)
    assert not request.has_draft_candidate()


def test_a_predraft_waits_for_its_base_and_is_counted_as_used():
    request = request_with(PROMPT)
    request.offer(draft(6, [8, 1, 2], [3, 4], ahead=True))  # assumes [1, 2] will be committed
    assert not request.has_draft_candidate()
    request.session.tokens += [1, 2]
    assert request.take_draft() == ([3, 4], [], True)


def test_a_predraft_on_a_wrong_base_never_starts_a_round_and_is_counted_stale():
    request = request_with(PROMPT)
    request.offer(draft(6, [8, 1, 2], [3, 4], ahead=True))
    request.session.tokens += [1, 9]  # the target chose 9, not 2
    assert not request.has_draft_candidate()  # the verifier waits for the redraft instead
    request.offer(draft(6, [8, 1, 9], [5]))  # the redraft supersedes it
    assert request.take_draft() == ([5], [], False)
    assert request.stats.num_stale_drafts == 1


def test_pre_drafts_of_text_that_did_not_come_never_crowd_out_the_draft_a_round_waits_for():
    """Found with a strong draft: pre-drafts at bases the text never reached piled up, and the
    pending-draft limit evicted the smallest base, which was the fresh draft on the committed
    end. The verifier then waited --draft-timeout (2 s) every round."""
    from verifier.requests import MAX_PENDING_DRAFTS

    request = request_with(PROMPT)
    for i in range(MAX_PENDING_DRAFTS):  # each assumed text that the target then did not write
        request.offer(draft(12 + 3 * i, [], [1, 2], ahead=True))
    request.offer(draft(4, [7, 8], [5, 6]))  # the drafter went back to the committed end
    assert request.has_draft_candidate()
    assert list(request.drafts) == [4]  # the pre-drafts beyond it were superseded
    assert request.take_draft() == ([5, 6], [], False)
    assert request.stats.num_stale_drafts == MAX_PENDING_DRAFTS


def test_over_the_pending_limit_the_draft_farthest_ahead_goes():
    from verifier.requests import MAX_PENDING_DRAFTS

    request = request_with(PROMPT)
    request.offer(draft(4, [7, 8], [5, 6]))
    for i in range(MAX_PENDING_DRAFTS):  # pre-drafts at ever larger bases (the drafter's order)
        request.offer(draft(7 + 3 * i, [], [1, 2], ahead=True))
    assert len(request.drafts) == MAX_PENDING_DRAFTS and 4 in request.drafts
    assert max(request.drafts) == 7 + 3 * (MAX_PENDING_DRAFTS - 2)  # the farthest-ahead speculation went
    assert request.take_draft() == ([5, 6], [], False)


def test_a_draft_is_rebased_when_the_text_grew_along_its_trunk():
    request = request_with(PROMPT)
    request.offer(draft(4, [7, 8], [1, 2, 3]))
    request.session.tokens += [1]
    assert request.take_draft() == ([2, 3], [], True)
    request.offer(draft(5, [8, 1], [9, 9]))
    request.session.tokens += [2]  # the trunk disagrees with the text past its base: unusable
    assert not request.has_draft_candidate() and request.take_draft() is None
    assert request.stats.num_stale_drafts == 1


def test_every_round_verifies_the_verifiers_own_prompt_lookup_at_the_root():
    from verifier.config import VerifierConfig
    from verifier.scheduler import Scheduler

    scheduler = Scheduler(VerifierConfig(own_lookup_tokens=3))
    request = request_with([1, 2, 3, 4, 9, 1, 2])  # "1 2" came before, followed by 3 4 9
    plan = request.plan_round(scheduler.own_lookup)
    assert (plan.trunk, plan.branches, plan.lookup, plan.has_draft) == ([], [], (3, 4, 9), False)
    request.offer(draft(7, [1, 2], [5, 6]))  # a draft from the drafter: the lookup goes beside its trunk
    plan = request.plan_round(scheduler.own_lookup)
    assert (plan.trunk, plan.lookup, plan.num_draft_tokens) == ([5, 6], (3, 4, 9), 5)
    assert (plan.cut(4).lookup, plan.cut(4).trunk) == ((3, 4, 9), [5])  # cut: the lookup first
    assert plan.cut(2).trunk == []  # the draft cut away whole
    request.offer(draft(7, [1, 2], [3, 4, 9, 8]))
    plan = request.plan_round(scheduler.own_lookup)
    assert (plan.trunk, plan.lookup) == ([3, 4, 9, 8], ())  # the trunk already holds the lookup
    none = Scheduler(VerifierConfig(own_lookup_tokens=0))
    assert request.plan_round(none.own_lookup).lookup == ()


def test_a_plan_is_cut_to_max_draft_tokens_and_to_the_context():
    request = request_with(PROMPT, max_context=8)  # 4 committed tokens: 3 positions left
    request.offer(draft(4, [7, 8], [1, 2, 3, 4, 5]))
    plan = request.plan_round(max_draft_tokens=10)
    assert plan.trunk == [1, 2, 3] and request.session.room == 3
    request = request_with(PROMPT)
    request.offer(Draft(request_id="r", base_length=4, base_tail=[7, 8], trunk=[1, 2], branches=[[3, 4], [5]]))
    plan = request.plan_round(max_draft_tokens=3)
    assert (plan.trunk, plan.branches) == ([1, 2], [[3]])
