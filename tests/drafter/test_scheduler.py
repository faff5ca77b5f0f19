"""The drafter's schedule: the verifier's waits before pre-drafts, ready blocks sent, round-robin."""
from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from drafter.session import DraftBlock
from drafter.scheduler import DraftScheduler, DrafterRequest
from tests.conftest import tiny_model


def make(max_batch: int = 1):
    engine = DraftEngine(tiny_model("llama"), DrafterConfig(gamma=3, max_batch=max_batch, outcomes=0))
    return engine, DraftScheduler(engine)


def request(engine, request_id: str, prompt: list[int], ahead: int = 0) -> DrafterRequest:
    """`ahead` > 0: a block was sent and the next one is a pre-draft past the committed text."""
    r = DrafterRequest(request_id, engine.open(prompt), len(prompt), 32, next_base=len(prompt) + ahead)
    if ahead:
        r.sent[len(prompt)] = DraftBlock(trunk=[0] * (ahead - 1), branches=[])
    return r


def test_the_request_the_verifier_waits_on_is_drafted_before_a_predraft():
    engine, scheduler = make()
    scheduler.add(request(engine, "ahead", [5, 6, 7], ahead=4))
    scheduler.add(request(engine, "waited", [1, 2, 3]))
    ready, batch, _ = scheduler.plan()
    assert ready == [] and [r.request_id for r in batch] == ["waited"]
    assert scheduler.order == ["ahead", "waited"]  # the one stepped goes to the back
    engine.step_batch([r.session for r in batch])
    while scheduler.needs_step(scheduler.requests["waited"]):
        engine.step(scheduler.requests["waited"].session)
    ready, batch, _ = scheduler.plan()
    assert [r.request_id for r in ready] == ["waited"]  # its block is ready: send it
    assert [r.request_id for r in batch] == ["ahead"] and batch[0].is_drafting_ahead  # now the pre-draft


def test_no_work_past_the_budget_or_with_two_drafts_out():
    engine, scheduler = make(max_batch=8)
    spent = request(engine, "spent", [1, 2, 3])
    spent.max_new_tokens = 1  # the target adds the only token left itself
    full = request(engine, "full", [4, 5, 6], ahead=3)
    full.sent[99] = DraftBlock(trunk=[1], branches=[])
    for r in (spent, full):
        scheduler.add(r)
    assert not scheduler.is_busy() and scheduler.plan() == ([], [], None)
    scheduler.remove("spent")
    assert list(scheduler.requests) == ["full"] and scheduler.order == ["full"]


def test_with_pre_drafts_off_only_the_verifiers_waits_are_drafted():
    engine = DraftEngine(tiny_model("llama"), DrafterConfig(gamma=3, pre_drafts="off"))
    scheduler = DraftScheduler(engine)
    scheduler.add(request(engine, "ahead", [5, 6, 7], ahead=4))
    assert not scheduler.is_busy() and scheduler.plan() == ([], [], None)  # its block is being verified: rest
    scheduler.add(request(engine, "waited", [1, 2, 3]))
    ready, batch, _ = scheduler.plan()
    assert ready == [] and [r.request_id for r in batch] == ["waited"]
    while scheduler.needs_step(scheduler.requests["waited"]):
        engine.step(scheduler.requests["waited"].session)
    ready, batch, _ = scheduler.plan()
    assert [r.request_id for r in ready] == ["waited"] and batch == []


def test_pre_drafts_takes_auto_on_or_off_only():
    import pytest

    with pytest.raises(ValueError, match="--pre-drafts"):
        DrafterConfig(pre_drafts="sometimes")
