"""bfloat16 on the CPU is batch-invariant: each layer kind (linear, LM head, attention, norm) gives
a row bit for bit the same numbers in a wide call as alone, a 16-token pass gives every position
the logits of 16 one-token passes, and speculation decodes exactly what our engine decodes
without drafts, on the family matrix (windows that slide, soft-capped Gemma 2)."""
import random

import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from transformers import AttentionInterface

from kvcache import cpu_attention, cpu_gemm
from kvcache.attention import attention_kinds, forward_one, new_cache, prefill
from kvcache.batch import BatchRow, batched_forward
from kvcache.cpu_attention import EXACT_NAME, exact_attention
from kvcache.slots import SlotPool, in_place_rows
from kvcache.packed import PackedLinear
from models.loading import for_engine
from launch.sequential import engine_alone, generate
from tests.families import FAMILIES, verify_ragged_rounds, family_pair, make_tokenizer
from verifier.engine import TargetEngine

pytestmark = pytest.mark.skipif(cpu_gemm.bf16_unusable_reason() is not None,
                                reason=f"no bfloat16 kernels here: {cpu_gemm.bf16_unusable_reason()}")
PROMPTS = ["def add(a, b):\n    return", "The quick brown fox", "for i in range(10):"]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def bf16_pair(family: str, tokenizer) -> tuple[torch.nn.Module, torch.nn.Module]:
    target, draft = family_pair(family, len(tokenizer))
    return for_engine(target.to(torch.bfloat16)), for_engine(draft.to(torch.bfloat16))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out_features,in_features", [(49, 37), (576, 576), (130, 1000)])
def test_a_linear_row_is_the_same_bits_in_any_batch(threads, out_features, in_features):
    torch.manual_seed(out_features)
    linear = torch.nn.Linear(in_features, out_features).to(torch.bfloat16)
    layer = PackedLinear(linear)
    assert layer.backend == "kernel" and layer.invariant
    x = torch.randn(1, 70, in_features).to(torch.bfloat16)  # past the float32 kernel's row limit too
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            wide = layer(x)
            alone = torch.cat([layer(x[:, i : i + 1]) for i in range(70)], dim=1)
            some = layer(x[:, 3:12])
            expected = (x.double() @ linear.weight.double().T + linear.bias.double())
    finally:
        torch.set_num_threads(before)
    assert wide.dtype == torch.bfloat16
    assert torch.equal(wide, alone) and torch.equal(wide[:, 3:12], some)
    torch.testing.assert_close(wide.double(), expected, atol=0.02 * expected.abs().max().item(), rtol=0.02)


@pytest.mark.parametrize("head_dim,softcap", [(64, None), (40, None), (16, 50.0)])
def test_an_attention_query_is_the_same_bits_alone_as_beside_others(head_dim, softcap):
    torch.manual_seed(head_dim)
    rows, heads, kv_heads, keys, queries = 3, 6, 2, 45, 9
    module = type("Layer", (), {"num_key_value_groups": heads // kv_heads})()
    q = torch.randn(rows, heads, queries, head_dim).to(torch.bfloat16)
    k, v = (torch.randn(rows, kv_heads, keys + 5, head_dim).to(torch.bfloat16)[:, :, :keys] for _ in range(2))
    allowed = torch.rand(rows, 1, queries, keys) > 0.4
    allowed[..., 0] = True
    allowed[1, :, 4] = False  # a query that may see nothing (a padding token) gets zeros
    allowed[..., 7] = False  # a column nobody may see holds garbage (a slot's scratch column): it stays out
    k[:, :, 7], v[:, :, 7] = float("nan"), float("inf")
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.bfloat16).min).to(torch.bfloat16)
    scale = head_dim ** -0.5
    wide, _ = exact_attention(module, q, k, v, mask, scaling=scale, softcap=softcap)
    for row in range(rows):
        for i in range(queries):
            alone, _ = exact_attention(module, q[row : row + 1, :, i : i + 1], k[row : row + 1], v[row : row + 1],
                                       mask[row : row + 1, :, i : i + 1], scaling=scale, softcap=softcap)
            assert torch.equal(alone[0, 0], wide[row, i]), (row, i)
    assert torch.equal(wide[1, 4], torch.zeros_like(wide[1, 4]))
    scores = q.double() @ k.double().repeat_interleave(3, 1).transpose(-1, -2) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num()
    values = v.double().repeat_interleave(3, 1).nan_to_num(posinf=0.0)
    expected = (weights @ values).transpose(1, 2)
    torch.testing.assert_close(wide.double(), expected, atol=0.02, rtol=0.02)


def test_rms_norm_rows_are_the_same_bits_in_any_batch(tokenizer):
    target, _ = bf16_pair("llama", tokenizer)
    norm = target.model.norm
    x = torch.randn(1, 40, target.config.hidden_size).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(norm(x), torch.cat([norm(x[:, i : i + 1]) for i in range(40)], dim=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_wide_pass_gives_every_position_the_logits_of_one_token_passes(family, tokenizer):
    target, _ = bf16_pair(family, tokenizer)
    assert isinstance(target.get_output_embeddings(), PackedLinear) and target.get_output_embeddings().invariant
    if target.config._attn_implementation != EXACT_NAME:
        pytest.fail(f"{family} kept {target.config._attn_implementation} attention")
    engine = TargetEngine(target)
    prompt = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    tokens = [random.Random(1).randrange(len(tokenizer)) for _ in range(16)]
    wide_session, narrow_session = engine.open(prompt), engine.open(prompt)
    base = wide_session.cache_length
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    wide = forward_one(target, engine.kinds, wide_session.cache, tokens, list(range(base, base + 16)), causal)
    narrow = torch.cat([forward_one(target, engine.kinds, narrow_session.cache, [t], [base + i],
                                    torch.ones(1, 1, dtype=torch.bool)) for i, t in enumerate(tokens)])
    assert torch.equal(wide, narrow), family


@pytest.mark.parametrize("family", FAMILIES)
def test_speculation_decodes_what_the_engine_decodes_without_drafts(family, tokenizer):
    target, draft = bf16_pair(family, tokenizer)
    engine, drafter = TargetEngine(target), DraftEngine(draft, DrafterConfig(gamma=6))
    num_accepted = 0
    for text in PROMPTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        result = generate(engine, drafter, ids, NEW_TOKENS)
        assert result.tokens == engine_alone(engine, ids, NEW_TOKENS), family
        num_accepted += result.metrics["accepted_tokens"]
    assert num_accepted > 0, "drafts were never accepted: the speculative path went untested"


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_ragged_batched_passes_decode_what_the_engine_decodes_alone(family, tokenizer):
    """Three requests verified together, trunks right for a random number of tokens then wrong:
    each ends as the engine's own one-token decoding."""
    target, _ = bf16_pair(family, tokenizer)
    engine = TargetEngine(target)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in PROMPTS]
    refs = [engine_alone(engine, p, NEW_TOKENS) for p in prompts]
    sessions = [engine.open(p) for p in prompts]
    verify_ragged_rounds(engine, sessions, prompts, refs, NEW_TOKENS, len(tokenizer))
    for session, prompt, ref in zip(sessions, prompts, refs):
        assert session.tokens[len(prompt) : len(prompt) + NEW_TOKENS] == ref, family


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_batch_of_scattered_slots_is_read_in_place_with_each_rows_own_bits(family, tokenizer):
    """Rows in slots that are not consecutive: attention reads the pool where they lie (no
    gather), and each row's logits are those of its pass alone, bit for bit."""
    target, _ = bf16_pair(family, tokenizer)
    kinds = attention_kinds(target.config)
    pool = SlotPool(target.config, 5, 64, torch.bfloat16, "cpu")
    assert pool.reads_in_place
    held = [pool.allocate() for _ in range(5)]
    slots = [held[3], held[0], held[4]]
    prompts = [[5, 9, 13, 2, 7, 30, 11], [3, 4, 5], [8, 1, 2, 9, 9, 4, 17, 12]]
    for slot, prompt in zip(slots, prompts):
        prefill(target, kinds, slot, prompt)
    new = [[6, 7, 8], [11], [12, 13]]
    rows = [BatchRow(n, list(range(len(p), len(p) + len(n))), torch.ones(len(n), len(n), dtype=torch.bool).tril())
            for p, n in zip(prompts, new)]
    seen = []
    original = cpu_attention.exact_attention

    def watch(module, query, key, value, *args, **kwargs):
        seen.append(in_place_rows(key) is not None and key.shape[0] == pool.num_slots)
        return original(module, query, key, value, *args, **kwargs)

    AttentionInterface.register(EXACT_NAME, watch)
    try:
        got = batched_forward(target, kinds, slots, rows)
    finally:
        AttentionInterface.register(EXACT_NAME, original)
    assert seen and all(seen)
    for logits, prompt, tokens in zip(got, prompts, new):
        slot = new_cache(SlotPool(target.config, 1, 64, torch.bfloat16, "cpu"))
        prefill(target, kinds, slot, prompt)
        alone = torch.cat([forward_one(target, kinds, slot, [t], [len(prompt) + i], torch.ones(1, 1, dtype=torch.bool))
                           for i, t in enumerate(tokens)])
        assert torch.equal(logits, alone)


def test_seeded_sampling_follows_the_engine_alone(tokenizer):
    from verifier.sampling import SamplingParams

    target, draft = bf16_pair("qwen2", tokenizer)
    engine, drafter = TargetEngine(target), DraftEngine(draft, DrafterConfig(gamma=6))
    ids = tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=7)
    result = generate(engine, drafter, ids, NEW_TOKENS, sampling=sampling)
    assert result.tokens == engine_alone(engine, ids, NEW_TOKENS, sampling=sampling)
