"""Prepacked linear layers: the same model, the same results (float rounding aside), the same
greedy text as HF's own decoding of the unpacked model."""
import copy

import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from kvcache.packed import PackedLinear, pack_linears
from launch.sequential import engine_alone, generate
from tests.conftest import reference_greedy
from tests.families import family_pair, make_tokenizer
from verifier.engine import TargetEngine


@pytest.mark.parametrize("rows", [1, 2, 3, 16])
def test_a_packed_layer_computes_what_the_plain_one_does(rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 40, bias=True)
    x = torch.randn(1, rows, 48)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_packed_engines_decode_what_hf_decodes_unpacked(family):
    tokenizer = make_tokenizer()
    target, draft = family_pair(family, len(tokenizer))
    packed_target, packed_draft = copy.deepcopy(target), copy.deepcopy(draft)
    num_linears = sum(type(m) is torch.nn.Linear for m in target.modules())
    assert pack_linears(packed_target) == num_linears > 0
    assert not any(type(m) is torch.nn.Linear for m in packed_target.modules())
    pack_linears(packed_draft)
    ids = tokenizer("def add(a, b):\n    return", add_special_tokens=False)["input_ids"]
    expected = reference_greedy(target, ids, 40)
    engine = TargetEngine(packed_target)
    assert engine_alone(engine, ids, 40) == expected
    result = generate(engine, DraftEngine(packed_draft, DrafterConfig()), ids, 40)
    assert result.tokens == expected and result.metrics["accepted_tokens"] > 0


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "qwen2"])
def test_packed_layers_skip_the_padding_of_a_batched_pass_with_the_same_results(family, monkeypatch):
    """Rows of 5, 1 and 3 tokens padded to 5: the packed layers compute the 9 real tokens only,
    and every row's logits and KV entries are those of the unpacked model, each row alone."""
    from kvcache.attention import attention_kinds, prefill
    from kvcache.batch import batched_forward
    from tests.kvcache.test_slots import PROMPTS, alone, assert_same_entries, pool_for, rows_for

    target, _ = family_pair(family, 320)
    packed = copy.deepcopy(target)
    pack_linears(packed)
    kinds = attention_kinds(target.config)
    pool = pool_for(packed)  # NaN-poisoned: padding must not turn into NaN in any real row
    slots = [pool.allocate() for _ in range(3)]
    prompts = PROMPTS[0], PROMPTS[2], PROMPTS[1]
    for slot, prompt in zip(slots, prompts):
        prefill(packed, kinds, slot, prompt)
    rows_computed = []
    linear = PackedLinear._linear
    monkeypatch.setattr(PackedLinear, "_linear", lambda self, x: rows_computed.append(x.shape[-2]) or linear(self, x))
    work = [(prompts[0], [6, 7, 8, 9, 10]), (prompts[1], [11]), (prompts[2], [12, 13, 14])]
    got = batched_forward(packed, kinds, slots, rows_for(work))
    assert set(rows_computed) == {9}  # 9 real tokens of the 15 in the padded batch, in every layer
    want, reference = alone(target, kinds, work)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert_same_entries(slots, reference)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_engine_models_attend_without_copying_keys_and_values(family, monkeypatch):
    """for_engine on a CPU: grouped-query attention leaves the head groups to SDPA; HF's
    repeat_kv (a copy of the cache per layer) is never called, and the greedy text is HF's."""
    import transformers.integrations.sdpa_attention as hf_sdpa

    from kvcache.attention import attention_kinds, prefill
    from kvcache.batch import batched_forward
    from models.loading import for_engine
    from tests.kvcache.test_slots import PROMPTS, alone, pool_for, rows_for

    tokenizer = make_tokenizer()
    target, _ = family_pair(family, len(tokenizer))
    ids = tokenizer("def add(a, b):\n    return", add_special_tokens=False)["input_ids"]
    expected = reference_greedy(target, ids, 30)
    engine_model = for_engine(copy.deepcopy(target))
    assert engine_model.config._attn_implementation != target.config._attn_implementation == "sdpa"

    def no_copies(*args, **kwargs):
        raise AssertionError("repeat_kv copied the keys and values")

    monkeypatch.setattr(hf_sdpa, "repeat_kv", no_copies)
    assert engine_alone(TargetEngine(engine_model), ids, 30) == expected
    kinds = attention_kinds(target.config)
    pool = pool_for(engine_model)
    slots = [pool.allocate() for _ in range(2)]
    prompts = PROMPTS[0], PROMPTS[1]
    for cache, prompt in zip(slots, prompts):
        prefill(engine_model, kinds, cache, prompt)
    work = [(prompts[0], [6, 7, 8]), (prompts[1], [11, 12])]
    got = batched_forward(engine_model, kinds, slots, rows_for(work))
    monkeypatch.undo()
    for g, w in zip(got, alone(target, kinds, work)[0]):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_skipping_padding_holds_only_on_the_thread_of_the_pass():
    """Two engines in threads of one process: one's padded pass never cuts the other's layers."""
    import threading

    from kvcache.packed import only_tokens

    torch.manual_seed(0)
    layer = PackedLinear(torch.nn.Linear(16, 8))
    x = torch.randn(2, 3, 16)
    with torch.inference_mode():
        whole = layer(x)
        inside, other = {}, {}
        with only_tokens(torch.tensor([0, 3, 4]), 2, 3):
            inside["y"] = layer(x)
            thread = threading.Thread(target=lambda: other.setdefault("y", layer(x)))
            thread.start()
            thread.join()
    torch.testing.assert_close(other["y"], whole)  # the other thread's pass: every token
    assert inside["y"].reshape(6, 8)[[1, 2, 5]].abs().sum() == 0  # padding: zeros
    torch.testing.assert_close(inside["y"].reshape(6, 8)[[0, 3, 4]], whole.reshape(6, 8)[[0, 3, 4]])
