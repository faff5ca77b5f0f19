"""The family matrix, in one process: tiny random pairs of every supported family decode exactly
what the target alone decodes (HF greedy generate; the keyed sampler), with windows that slide."""
import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from kvcache.attention import CHUNKED, FULL, SLIDING, AttentionKind, attention_kinds, layer_masks, prefill
from launch.reference import target_alone
from launch.sequential import generate
from tests.conftest import reference_greedy
from tests.families import FAMILIES, verify_ragged_rounds, WINDOW, family_pair, make_tokenizer
from tests.kvcache.test_slots import fresh_slot
from verifier.engine import TargetEngine
from verifier.sampling import SamplingParams

PROMPTS = ["def add(a, b):\n    return", "The quick brown fox", "for i in range(10):"]
NEW_TOKENS = 40  # several windows past the prompt


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assert_cache_is_a_fresh_prefill(engine: TargetEngine, session) -> None:
    fresh = fresh_slot(engine.model)
    prefill(engine.model, engine.kinds, fresh, session.tokens[:-1])
    assert session.cache_length == len(session.tokens) - 1
    for ours, theirs in zip(session.cache.layers, fresh.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_and_seeded_sampling_equal_the_target_alone(family, tokenizer):
    target, draft = family_pair(family, len(tokenizer))
    engine, drafter = TargetEngine(target), DraftEngine(draft, DrafterConfig(gamma=6))
    num_accepted = 0
    for text in PROMPTS:
        ids = encode(tokenizer, text)
        result = generate(engine, drafter, ids, NEW_TOKENS)
        assert result.tokens == reference_greedy(target, ids, NEW_TOKENS), family
        num_accepted += result.metrics["accepted_tokens"]
    sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=11)
    ids = encode(tokenizer, PROMPTS[0])
    sampled = generate(engine, drafter, ids, NEW_TOKENS, sampling=sampling)
    assert sampled.tokens == target_alone(target, ids, NEW_TOKENS, sampling=sampling), family
    assert num_accepted > 0, "drafts were never accepted: the speculative path went untested"


@pytest.mark.parametrize("family", ["mistral", "gemma2", "phi3", "qwen2-padded"])
def test_three_requests_in_batched_passes_decode_exactly(family, tokenizer):
    """Trunks right for a random number of tokens, then wrong, for 3 ragged requests verified
    together; each ends as HF greedy and with a cache equal to a fresh prefill."""
    target, _ = family_pair(family, len(tokenizer))
    engine = TargetEngine(target)
    prompts = [encode(tokenizer, text) for text in PROMPTS]
    refs = [reference_greedy(target, p, NEW_TOKENS) for p in prompts]
    sessions = [engine.open(p) for p in prompts]
    verify_ragged_rounds(engine, sessions, prompts, refs, NEW_TOKENS, len(tokenizer))
    for session, prompt, ref in zip(sessions, prompts, refs):
        assert session.tokens[len(prompt) : len(prompt) + NEW_TOKENS] == ref
        assert_cache_is_a_fresh_prefill(engine, session)


def test_attention_kinds_of_the_families(tokenizer):
    gemma, _ = family_pair("gemma2", len(tokenizer))
    assert attention_kinds(gemma.config) == [AttentionKind(SLIDING, WINDOW), AttentionKind(FULL)] * 2
    mistral, _ = family_pair("mistral", len(tokenizer))
    assert attention_kinds(mistral.config) == [AttentionKind(SLIDING, WINDOW)] * 4
    llama, _ = family_pair("llama", len(tokenizer))
    assert attention_kinds(llama.config) == [AttentionKind(FULL)] * 4


def test_models_with_recurrent_state_are_refused_at_load():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4))
    with pytest.raises(ValueError, match="recurrent state"):
        TargetEngine(model)
    with pytest.raises(ValueError, match="recurrent state"):
        DraftEngine(model, DrafterConfig())


def test_window_and_chunk_rules_hand_computed():
    """Window 3: a query at q sees q-2..q. Chunk 2: it sees its own chunk's earlier keys."""
    positions = torch.tensor([[0, 1, 2, 3, 4]])
    causal = torch.ones(1, 5, 5, dtype=torch.bool).tril()
    sliding = layer_masks([AttentionKind(SLIDING, 3)], causal, positions, positions, torch.float32)
    assert (sliding[0, 0] == 0).int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    both = layer_masks([AttentionKind(CHUNKED, 2), AttentionKind(FULL)], causal, positions, positions, torch.float32)
    assert set(both) == {CHUNKED, FULL}
    assert (both[CHUNKED][0, 0] == 0).int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert bool((both[FULL][0, 0] == 0).equal(causal[0]))
