"""Batched verification: ragged requests in one target pass give exactly what one-by-one
passes give, and each cache ends laid out as a fresh prefill of its committed text."""
import random

import pytest

from tests.conftest import TINY_VOCAB, reference_greedy, tiny_model
from tests.verifier.test_engine import assert_cache_is_a_fresh_prefill
from verifier.engine import TargetEngine

PROMPTS = [[5, 17, 33, 2, 40, 41, 9, 9, 12], [7], [3, 4, 60, 61, 62]]  # ragged, one of a single token


def draft_for(ref, rng):
    """A trunk right for a random number of tokens, then wrong; a branch or two."""
    good = rng.randrange(0, 4)
    trunk = ref[:good] + [(ref[good] + 1) % TINY_VOCAB]
    branches = [[rng.randrange(TINY_VOCAB) for _ in range(rng.randrange(1, 4))] for _ in range(rng.randrange(0, 3))]
    return trunk, branches


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_rounds_decode_every_request_exactly(arch):
    model = tiny_model(arch)
    engine = TargetEngine(model)
    refs = [reference_greedy(model, p, 40) for p in PROMPTS]
    sessions = [engine.open(p) for p in PROMPTS]
    rng = random.Random(0)
    while any(len(s.tokens) - len(p) < 40 for s, p in zip(sessions, PROMPTS)):
        work = []
        for session, prompt, ref in zip(sessions, PROMPTS, refs):
            if len(session.tokens) - len(prompt) < 40:
                work.append((session, *draft_for(ref[len(session.tokens) - len(prompt):] + [0] * 8, rng), None))
        engine.verify_batch(work)
        for session, *_ in work:
            assert session.cache_length == len(session.tokens) - 1
    for session, prompt, ref in zip(sessions, PROMPTS, refs):
        assert session.tokens[len(prompt) : len(prompt) + 40] == ref
        assert_cache_is_a_fresh_prefill(model, session)


def test_a_batch_matches_one_by_one_passes():
    model = tiny_model("llama")
    engine = TargetEngine(model)
    drafts = [([1, 2, 3], [[4, 5]]), ([], []), ([9], [[8], [7, 6]])]
    one_by_one = [engine.verify(engine.open(p), t, b) for p, (t, b) in zip(PROMPTS, drafts)]
    batched = engine.verify_batch([(engine.open(p), t, b, None) for p, (t, b) in zip(PROMPTS, drafts)])
    assert batched == one_by_one
