"""Teacher-forced agreement (protocol.messages.Agreement): every committed position is judged
once, in order, and each bit is what the draft's own greedy step from the committed prefix says."""
import random

import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from drafter.scheduler import CATCH_UP_TOKENS
from tests.conftest import tiny_model
from tests.verifier.test_engine import assert_cache_is_a_fresh_prefill

PROMPT = [5, 17, 33, 2, 40, 41, 5, 17, 9, 12]


@torch.inference_mode()
def greedy_agreement(model, tokens: list[int], start: int) -> list[int]:
    """Brute force: at each position p >= start, is the argmax after tokens[:p] tokens[p]?"""
    logits = model(torch.tensor([tokens])).logits[0]
    return [int(logits[p - 1].argmax().item() == tokens[p]) for p in range(start, len(tokens))]


@pytest.mark.parametrize("draft_lengths", [(4,), (0,), (3, 0, 0, 2, 0, 5)])
def test_bits_equal_the_drafts_own_greedy_steps_over_random_verdicts(draft_lengths):
    """Verdicts that take some drafted tokens, reject others, or append tokens the draft never
    saw (rounds without a draft, branches): the bits reported, in order and without a gap, are
    exactly the brute-force teacher-forced agreement, and the cache stays a fresh prefill."""
    model = tiny_model("llama")
    engine = DraftEngine(model, DrafterConfig(gamma=5, window=2, ngram=3, phrases_checked=2))
    session = engine.open(PROMPT)
    rng = random.Random(7)
    reported: list[int] = []
    for round_ in range(24):
        engine.ask(session, draft_lengths[round_ % len(draft_lengths)])
        if session.draft_length:
            engine.draft(session)
        elif engine.lags(session, CATCH_UP_TOKENS // 4):
            engine.step(session)  # the catch-up pass of a request asked for no draft
        drafted = session.tokens[session.num_committed :]
        taken = rng.randint(0, len(drafted))
        appended = drafted[:taken] + [rng.randrange(96) for _ in range(rng.randint(1, 3))]
        engine.sync(session, appended)
        judged = engine.take_agreement(session)
        if judged is not None:
            assert judged[0] == len(PROMPT) + len(reported)  # in order, no gap, none twice
            reported += judged[1]
    engine.ask(session, 0)
    while engine.lags(session, 1):
        engine.step(session)
    judged = engine.take_agreement(session)
    reported += judged[1] if judged else []
    committed = session.tokens[: session.num_committed]
    assert reported == greedy_agreement(model, committed, len(PROMPT))
    assert 0 < sum(reported) < len(reported)  # both kinds of evidence were exercised
    assert_cache_is_a_fresh_prefill(model, session)
