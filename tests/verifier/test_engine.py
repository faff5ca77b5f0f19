import pytest
import torch
from transformers import DynamicCache

from tests.conftest import reference_greedy, tiny_model
from verifier.engine import TargetEngine


@torch.inference_mode()
def fresh_cache(model, tokens):
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([tokens]), cache=cache, use_cache=True)
    return cache


def assert_cache_is_a_fresh_prefill(model, session):
    """The session's cache holds what a fresh prefill of its committed text (but the last token) holds."""
    expected = fresh_cache(model, session.tokens[:-1])
    for got, want in zip(session.cache.layers, expected.layers):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-4)


PROMPT = [5, 17, 33, 2, 40, 41]


def opened(arch):
    """A tiny target, its own greedy continuation of PROMPT, and an engine session on PROMPT."""
    model = tiny_model(arch)
    engine = TargetEngine(model)
    return model, reference_greedy(model, PROMPT, 8), engine, engine.open(PROMPT)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_accepted_branch_is_compacted_into_place(arch):
    model, ref, engine, session = opened(arch)
    assert session.cache_length == len(PROMPT) - 1
    # trunk right for 2 tokens; the second branch continues it correctly for 3 more
    trunk = ref[:2]
    branches = [[(ref[2] + 1) % 96, 1], ref[2:5], [ref[2], (ref[3] + 1) % 96]]
    result = engine.verify(session, trunk, branches)
    assert result.appended == ref[:6]  # 2 trunk + 3 branch + the bonus token
    assert (result.num_trunk_accepted, result.num_branch_accepted) == (2, 3)
    assert result.trunk_predictions == ref[:3]
    assert result.branch_predictions[1] == ref[3:6]
    # KV invariant, and the compacted entries equal a fresh prefill of the committed text
    assert session.cache_length == len(session.tokens) - 1
    assert_cache_is_a_fresh_prefill(model, session)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_lookup_at_the_root_is_accepted_when_the_trunk_fails_at_once(arch):
    model, ref, engine, session = opened(arch)
    wrong = (ref[0] + 1) % 96
    result = engine.verify(session, [wrong, 3], [[4, 5]], lookup=ref[:3])
    assert result.appended == ref[:4]  # 3 lookup tokens + the bonus token
    assert (result.num_trunk_accepted, result.num_branch_accepted) == (0, 3)
    assert result.trunk_predictions[0] == ref[0] and len(result.branch_predictions) == 1  # the draft's own only
    assert session.cache_length == len(session.tokens) - 1
    assert_cache_is_a_fresh_prefill(model, session)
    batched = engine.verify_batch([(session, [], [], None, ref[4:6])])[0]  # the batch form takes it too
    assert batched.appended == ref[4:7]


def test_rejection_crops_the_cache():
    model = tiny_model("llama")
    prompt = [3, 4, 5]
    ref = reference_greedy(model, prompt, 4)
    engine = TargetEngine(model)
    session = engine.open(prompt)
    result = engine.verify(session, [ref[0], (ref[1] + 1) % 96, 7, 8], [[1, 2]])
    assert result.appended == ref[:2]
    assert result.num_accepted == 1
    assert session.cache_length == len(session.tokens) - 1 == len(prompt) + 1


def test_bad_prompts_are_refused_clearly():
    engine = TargetEngine(tiny_model("llama"))
    with pytest.raises(ValueError, match="empty"):
        engine.open([])
    with pytest.raises(ValueError, match="context"):
        engine.open([1] * 300)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.open([1, 5000])
