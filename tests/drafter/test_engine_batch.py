"""Batched draft passes: the same tokens and caches as one session at a time."""
import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from tests.conftest import tiny_model
from tests.verifier.test_engine import assert_cache_is_a_fresh_prefill

PROMPTS = [[5, 17, 33, 2, 40, 41, 5, 17], [9], [3, 4, 5, 6, 3, 4]]  # ragged, one a single token


def assert_same_sessions(left, right):
    for a, b in zip(left, right):
        assert a.tokens == b.tokens and a.window == b.window
        assert a.cache_length == b.cache_length == len(a.tokens) - 1
        for la, lb in zip(a.cache.layers, b.cache.layers):
            torch.testing.assert_close(la.keys, lb.keys, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(la.values, lb.values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_steps_equal_one_by_one(arch):
    """Without pool phrases in the pass (so no pool read order matters) a batched pass leaves
    every session exactly as its own pass does, across a sync that crops one of them."""
    model = tiny_model(arch)
    config = DrafterConfig(window=3, ngram=3, phrases_checked=0, seed_pool_from_text=False)
    one, many = DraftEngine(model, config), DraftEngine(model, config)
    alone = [one.open(p) for p in PROMPTS]
    batched = [many.open(p) for p in PROMPTS]
    for round_ in range(6):
        for session in alone:
            one.step(session)
        many.step_batch(batched)
        assert_same_sessions(alone, batched)
        if round_ == 2:  # the target took the first drafted token and then another one
            for engine, sessions in ((one, alone), (many, batched)):
                first = sessions[0].tokens[sessions[0].num_committed]
                engine.sync(sessions[0], [first, (first + 1) % 96])
            assert_same_sessions(alone, batched)


def test_batched_caches_stay_fresh_prefills_with_phrases():
    """With pool phrases checked and accepted inside the pass, each cache is still exactly a
    fresh prefill of its text but the last token (the kept phrase entries sit in place)."""
    model = tiny_model("llama")
    engine = DraftEngine(model, DrafterConfig(window=3, ngram=3, phrases_checked=4))
    sessions = [engine.open(p) for p in PROMPTS]
    for _ in range(8):
        engine.step_batch(sessions)
    for session in sessions:
        assert_cache_is_a_fresh_prefill(model, session)
    assert sum(s.num_phrase_hits for s in sessions) > 0  # the phrase path was exercised


def test_a_session_asked_for_no_draft_only_catches_up():
    """Asked for no draft, a pass feeds only the uncached tokens: no window, no phrases, and the
    cache still holds exactly the text but its last token."""
    model = tiny_model("llama")
    engine = DraftEngine(model, DrafterConfig(window=3, ngram=3, phrases_checked=4))
    sessions = [engine.open(p) for p in PROMPTS]
    engine.step_batch(sessions)  # drafting: the window grows a level
    windows = [[list(level) for level in s.window] for s in sessions]
    for session in sessions:
        engine.ask(session, 0)
        assert len(engine._layout(session)[1].tokens) == 1  # just the last drafted token
    engine.step_batch(sessions)
    for session, window in zip(sessions, windows):
        assert session.window == window
        assert_cache_is_a_fresh_prefill(model, session)
