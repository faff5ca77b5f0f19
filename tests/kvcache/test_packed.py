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
    result = generate(engine, DraftEngine(packed_draft, DrafterConfig(min_agreement=0.0)), ids, 40)
    assert result.tokens == expected and result.metrics["accepted_tokens"] > 0
