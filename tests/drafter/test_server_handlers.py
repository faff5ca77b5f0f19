"""The drafter loop's handlers, driven over a real socket by a fake verifier (a ROUTER)."""
import pytest
import zmq

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from drafter.scheduler import CATCH_UP_TOKENS
from drafter.server import BASE_TAIL, DrafterServer
from protocol.codec import decode, encode
from protocol.messages import Agreement, Close, Draft, Error, ErrorCode, Hello, HelloAck, Open, Resync, Verdict
from tests.conftest import tiny_model

PROMPT = [5, 9, 13, 2, 7, 30, 11, 40, 41, 42]


@pytest.fixture
def link(tmp_path):
    endpoint = f"ipc://{tmp_path}/drafter.sock"
    verifier = zmq.Context.instance().socket(zmq.ROUTER)
    verifier.bind(endpoint)
    engine = DraftEngine(tiny_model("llama"), DrafterConfig(gamma=4, window=2, ngram=3))
    server = DrafterServer(engine, endpoint, "fp", vocab_size=96)
    server.socket.connect(endpoint)
    server.send(server.hello)
    identity, hello = receive(verifier)
    assert isinstance(hello, Hello) and hello.tokenizer_fingerprint == "fp" and hello.vocab_size == 96
    yield server, verifier, identity
    server.socket.close(0)
    verifier.close(0)


def receive(verifier, timeout_ms=5000):
    assert verifier.poll(timeout_ms), "the drafter sent nothing"
    identity, frame = verifier.recv_multipart()
    return identity, decode(frame)


def deliver(server, verifier, identity, msg) -> None:
    verifier.send_multipart([identity, encode(msg) if not isinstance(msg, bytes) else msg])
    assert server.socket.poll(5000)
    server.drain()


def next_draft(server, verifier) -> Draft:
    for _ in range(100):  # a few loop turns: a batched draft pass, then the block goes out
        server.advance()
        if verifier.poll(20):  # a busy machine may take a while to carry it
            msg = receive(verifier)[1]
            if isinstance(msg, Draft):
                return msg
    raise AssertionError("no Draft came")


def test_hello_ack_limits_the_vocabulary_and_a_refusal_stops_the_drafter(link):
    server, verifier, identity = link
    deliver(server, verifier, identity, HelloAck(vocab_size=64))
    assert server.is_acknowledged and server.engine.num_proposable == 64
    deliver(server, verifier, identity, Error(request_id="", code=ErrorCode.REFUSED, message="tokenizer differs"))
    assert not server.is_running and "tokenizer differs" in server.refusal


def test_an_open_request_is_drafted_at_its_committed_end(link):
    server, verifier, identity = link
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=32, draft_length=4))
    draft = next_draft(server, verifier)
    assert (draft.request_id, draft.base_length, draft.base_tail) == ("r", len(PROMPT), PROMPT[-BASE_TAIL:])
    assert 4 <= len(draft.trunk) <= 32 - 1  # at least gamma, within the budget (max_new_tokens - 1)


def test_a_verdict_moves_the_drafts_on_and_close_forgets_the_request(link):
    server, verifier, identity = link
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=32, draft_length=4))
    draft = next_draft(server, verifier)
    appended = draft.trunk[:1] + [3]  # the first trunk token accepted, then the target's own
    deliver(server, verifier, identity, Verdict(
        request_id="r", committed_length=len(PROMPT) + 2, appended=appended, num_trunk_verified=len(draft.trunk),
        num_trunk_accepted=1, trunk_predictions=appended + [0] * (len(draft.trunk) - 1),
        branch_predictions=[], draft_length=4))
    session = server.requests["r"].session
    assert session.num_committed == len(PROMPT) + 2 and session.tokens[: session.num_committed] == PROMPT + appended
    assert next_draft(server, verifier).base_length == len(PROMPT) + 2
    deliver(server, verifier, identity, Close(request_id="r"))
    assert "r" not in server.requests


def test_a_verdict_that_wants_no_draft_rests_the_request_until_one_does(link):
    server, verifier, identity = link
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=32, draft_length=4))
    draft = next_draft(server, verifier)
    while verifier.poll(200):  # the pre-draft on its way too
        receive(verifier)
    appended = [draft.trunk[0] + 1]  # the first trunk token rejected: the pre-draft is void
    verdict = dict(request_id="r", num_trunk_verified=len(draft.trunk), num_trunk_accepted=0, 
                   branch_predictions=[])
    deliver(server, verifier, identity, Verdict(committed_length=len(PROMPT) + 1, appended=appended,
                                                trunk_predictions=appended, draft_length=0, **verdict))
    session = server.requests["r"].session
    steps = session.cache_length
    for _ in range(20):
        server.advance()
    said = []
    while verifier.poll(200):
        said.append(receive(verifier)[1])
    # no Draft: only what its rejected token says of the draft (it predicted another one there)
    assert said == [Agreement(request_id="r", start=len(PROMPT), agreed=[0])]
    assert not server.scheduler.is_busy()  # no draft pass: it sleeps
    assert session.cache_length == steps and session.num_committed == len(PROMPT) + 1  # still in step
    deliver(server, verifier, identity, Verdict(committed_length=len(PROMPT) + 2, appended=[3],
                                                trunk_predictions=[3], draft_length=4, **verdict))
    assert next_draft(server, verifier).base_length == len(PROMPT) + 2  # drafting again, at the new end


def test_a_verdict_it_cannot_place_asks_for_a_resync(link):
    server, verifier, identity = link
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=32, draft_length=4))
    next_draft(server, verifier)
    deliver(server, verifier, identity, Verdict(
        request_id="r", committed_length=len(PROMPT) + 5, appended=[1, 2], num_trunk_verified=0,
        num_trunk_accepted=0, trunk_predictions=[1], branch_predictions=[],
        draft_length=4))
    msg = receive(verifier)[1]
    while isinstance(msg, Draft):  # drafts already on their way
        msg = receive(verifier)[1]
    assert msg == Resync(request_id="r") and "r" not in server.requests


def test_a_malformed_frame_is_dropped_and_the_loop_goes_on(link):
    server, verifier, identity = link
    deliver(server, verifier, identity, b"\x93not msgpack we know")
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=8, draft_length=4))
    assert "r" in server.requests


def test_an_open_that_wants_no_draft_rests_from_the_start(link):
    server, verifier, identity = link  # the verifier runs the target alone: no draft pass may take its cores
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=32, draft_length=0))
    for _ in range(20):
        server.advance()
    assert not server.scheduler.is_busy() and not verifier.poll(200)
    assert server.requests["r"].session.cache_length == 0  # not even its prompt was run through the draft
    deliver(server, verifier, identity, Verdict(
        request_id="r", committed_length=len(PROMPT) + 1, appended=[3], num_trunk_verified=0, num_trunk_accepted=0,
        trunk_predictions=[3], branch_predictions=[], draft_length=4))
    assert next_draft(server, verifier).base_length == len(PROMPT) + 1  # drafting once a verdict asks


def test_a_resting_request_is_caught_up_in_one_pass_and_its_agreement_reported(link):
    """Asked for no draft, the committed tokens still reach the draft: once CATCH_UP_TOKENS wait,
    one pass feeds them all and every position gets its bit, in order."""
    server, verifier, identity = link
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=64, draft_length=0))
    session = server.requests["r"].session
    text = [(7 * i + 3) % 96 for i in range(CATCH_UP_TOKENS)]
    for n, token in enumerate(text, start=1):
        deliver(server, verifier, identity, Verdict(
            request_id="r", committed_length=len(PROMPT) + n, appended=[token], num_trunk_verified=0,
            num_trunk_accepted=0, trunk_predictions=[token], branch_predictions=[], draft_length=0))
        server.advance()
    agreement = [receive(verifier)[1]]
    assert agreement and agreement[0].start == len(PROMPT)  # from the first token on (the prompt was fed too)
    assert len(agreement[0].agreed) == CATCH_UP_TOKENS and not verifier.poll(200)
    assert session.cache_length == len(session.tokens) - 1 and not server.scheduler.is_busy()


@pytest.fixture
def cache_link(tmp_path):
    """The drafter with the speculation cache on (--pre-drafts on, --outcomes 8)."""
    endpoint = f"ipc://{tmp_path}/drafter.sock"
    verifier = zmq.Context.instance().socket(zmq.ROUTER)
    verifier.bind(endpoint)
    engine = DraftEngine(tiny_model("llama"), DrafterConfig(gamma=4, window=2, ngram=3, pre_drafts="on", outcomes=8))
    server = DrafterServer(engine, endpoint, "fp", vocab_size=96)
    server.socket.connect(endpoint)
    server.send(server.hello)
    identity, _ = receive(verifier)
    yield server, verifier, identity
    server.socket.close(0)
    verifier.close(0)


def verdict(draft: Draft, appended: list[int], accepted: int) -> Verdict:
    return Verdict(request_id=draft.request_id, committed_length=draft.base_length + len(appended), appended=appended,
                   num_trunk_verified=len(draft.trunk), num_trunk_accepted=accepted,
                   trunk_predictions=(appended + [0] * len(draft.trunk))[: len(draft.trunk) + 1],
                   branch_predictions=[], draft_length=4)


def drafted_ahead(server, draft: Draft):
    """Run the loop while the verifier 'verifies' `draft`: the speculation cache fills up."""
    for _ in range(100):
        if not server.scheduler.is_busy():
            break
        server.advance()
    session = server.requests[draft.request_id].session
    assert session.outcome_base == draft.base_length and session.outcomes
    return session


def test_a_verdict_the_cache_holds_is_answered_at_once_without_a_draft_pass(cache_link):
    server, verifier, identity = cache_link
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=64, draft_length=4))
    draft = next_draft(server, verifier)
    assert not verifier.poll(50)  # nothing sent ahead: the cache answers verdicts
    session = drafted_ahead(server, draft)
    branch = max(session.outcomes, key=lambda b: b.position)  # the deepest outcome held
    k = branch.position - draft.base_length
    passes, tree_passes = session.num_passes, session.num_tree_passes
    deliver(server, verifier, identity, verdict(draft, draft.trunk[:k] + branch.tokens[:1], k))
    _, answer = receive(verifier, timeout_ms=1000)  # sent by the handler itself, first
    assert isinstance(answer, Draft) and answer.drafted_ahead
    assert answer.base_length == draft.base_length + k + 1 and answer.trunk == branch.tokens[1:]
    assert (session.num_passes, session.num_tree_passes) == (passes, tree_passes)  # no pass ran for it
    assert session.num_outcome_hits == 1 and session.cache_length == len(session.tokens) - 1


def test_a_verdict_the_cache_does_not_hold_is_drafted_afresh(cache_link):
    server, verifier, identity = cache_link
    deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=64, draft_length=4))
    draft = next_draft(server, verifier)
    session = drafted_ahead(server, draft)
    held = {(b.position, b.tokens[0]) for b in session.outcomes}
    token = next(t for t in range(96) if (draft.base_length, t) not in held and t != draft.trunk[0])
    passes = session.num_passes
    deliver(server, verifier, identity, verdict(draft, [token], 0))
    while verifier.poll(50):  # the handler sends the Agreement alone: no block is ready
        assert isinstance(receive(verifier)[1], Agreement)
    fresh = next_draft(server, verifier)
    assert fresh.base_length == draft.base_length + 1 and not fresh.drafted_ahead
    assert session.num_passes > passes and session.num_outcome_hits == 0


def test_record_rounds_writes_each_verdicts_outcome_and_rank(tmp_path):
    """--record-rounds: one JSON line per verdict; the outcome the cache held ranks among the
    likely ones, and a hit says so (bench.simulate reads these)."""
    import json

    endpoint, path = f"ipc://{tmp_path}/drafter.sock", tmp_path / "rounds.jsonl"
    verifier = zmq.Context.instance().socket(zmq.ROUTER)
    verifier.bind(endpoint)
    engine = DraftEngine(tiny_model("llama"), DrafterConfig(gamma=4, window=2, ngram=3, pre_drafts="on", outcomes=8,
                                                             record_rounds=str(path)))
    server = DrafterServer(engine, endpoint, "fp", vocab_size=96)
    server.socket.connect(endpoint)
    server.send(server.hello)
    identity, _ = receive(verifier)
    try:
        deliver(server, verifier, identity, Open(request_id="r", token_ids=PROMPT, max_new_tokens=64, draft_length=4))
        draft = next_draft(server, verifier)
        session = drafted_ahead(server, draft)
        branch = session.outcomes[0]  # the most likely outcome
        k = branch.position - draft.base_length
        deliver(server, verifier, identity, verdict(draft, draft.trunk[:k] + branch.tokens[:1], k))
        record = json.loads(path.read_text().splitlines()[-1])
        assert record["rank"] == 0 and record["hit"] and record["trunk"] == len(draft.trunk)
        assert record["committed"] == k + 1 and record["width"] >= 1 + len(draft.trunk)
    finally:
        server.socket.close(0)
        verifier.close(0)
