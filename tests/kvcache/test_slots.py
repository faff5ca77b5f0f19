"""KV slots: batched passes over slots (consecutive, scattered, ragged) compute what each row's
pass alone computes, and HF's own forward; crops and moves stay inside the slot; a full pool
refuses a session; memory is bounded up front."""
import pytest
import torch

from kvcache.attention import attention_kinds, forward_one, new_cache, prefill
from kvcache.batch import BatchRow, batched_forward
from kvcache.slots import NoFreeSlot, SlotPool, resolve_max_len, slot_bytes
from tests.families import family_pair

PROMPTS = [[5, 9, 13, 2, 7, 30, 11], [3, 4, 5], [8, 1, 2, 9, 9, 4, 17, 12, 6, 50, 3], [40, 41]]


def pool_for(model, num_slots=4, max_len=64, poison=True) -> SlotPool:
    pool = SlotPool(model.config, num_slots, max_len, torch.float32, "cpu")
    if poison:  # never-written memory may hold anything: nothing may leak from it
        for buffer in (*pool.keys, *pool.values):
            buffer.fill_(float("nan"))
    return pool


def fresh_slot(model, max_len=512):
    """An empty slot of a pool of its own."""
    parameter = next(model.parameters())
    return new_cache(SlotPool(model.config, 1, max_len, parameter.dtype, parameter.device))


def alone(model, kinds, prompts_and_new):
    """The reference for a batched pass: each row prefilled in a slot of its own and run by
    itself (no batch, no padding). Returns (logits per row, the slots)."""
    logits, slots = [], []
    for (prompt, _), row in zip(prompts_and_new, rows_for(prompts_and_new)):
        slot = fresh_slot(model)
        prefill(model, kinds, slot, prompt)
        logits.append(forward_one(model, kinds, slot, row.tokens, row.positions, row.visible))
        slots.append(slot)
    return logits, slots


def rows_for(prompts_and_new):
    rows = []
    for prompt, new in prompts_and_new:
        n = len(new)
        rows.append(BatchRow(tokens=new, positions=list(range(len(prompt), len(prompt) + n)),
                             visible=torch.ones(n, n, dtype=torch.bool).tril()))
    return rows


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
@pytest.mark.parametrize("order", ["consecutive", "scattered", "reversed"])
def test_batched_passes_over_slots_equal_each_row_alone_and_hf(family, order):
    target, _ = family_pair(family, 320)
    kinds = attention_kinds(target.config)
    pool = pool_for(target)
    held = [pool.allocate() for _ in range(4)]
    slots = {"consecutive": held[:2], "scattered": [held[0], held[2]], "reversed": [held[3], held[1]]}[order]
    prompts = PROMPTS[2], PROMPTS[1]
    for slot, prompt in zip(slots, prompts):
        prefill(target, kinds, slot, prompt)
    work = [(prompts[0], [6, 7, 8, 9, 10]), (prompts[1], [11])]  # ragged: one row is padded
    got = batched_forward(target, kinds, slots, rows_for(work))
    want, reference = alone(target, kinds, work)
    for g, w, (prompt, new) in zip(got, want, work):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
        hf = target(input_ids=torch.tensor([prompt + new])).logits[0, len(prompt):]  # HF's own causal pass
        torch.testing.assert_close(g, hf, atol=1e-4, rtol=1e-4)
    assert_same_entries(slots, reference)


def assert_same_entries(caches, others) -> None:
    """Pairwise the same length and the same keys and values in every layer."""
    for cache, other in zip(caches, others):
        assert cache.get_seq_length() == other.get_seq_length()
        for ours, theirs in zip(cache.layers, other.layers):
            torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ours.values, theirs.values, atol=1e-4, rtol=1e-4)


def test_crop_and_move_stay_inside_the_slot():
    target, _ = family_pair("llama", 320)
    kinds = attention_kinds(target.config)
    pool = pool_for(target)
    slot, other = pool.allocate(), pool.allocate()
    prefill(target, kinds, slot, PROMPTS[0])
    forward_one(target, kinds, slot, [3, 4, 5, 6], [7, 8, 8, 9], torch.ones(4, 4, dtype=torch.bool).tril())
    before = [(layer.keys.clone(), layer.values.clone()) for layer in slot.layers]
    slot.keep(list(range(7)) + [9, 10])  # an accepted branch moves into place
    assert slot.get_seq_length() == 9 and other.get_seq_length() == 0
    for layer, (keys, values) in zip(slot.layers, before):
        torch.testing.assert_close(layer.keys, torch.cat([keys[:, :, :7], keys[:, :, 9:11]], dim=2))
        torch.testing.assert_close(layer.values, torch.cat([values[:, :, :7], values[:, :, 9:11]], dim=2))
    slot.keep(list(range(5)))  # a crop is a length reset
    assert slot.get_seq_length() == 5 and slot.layers[0].keys.shape[2] == 5


def test_slots_come_back_and_a_full_pool_refuses_a_session():
    target, _ = family_pair("llama", 320)
    pool = pool_for(target, num_slots=2, poison=False)
    first, second = new_cache(pool), new_cache(pool)
    assert pool.num_free == 0
    with pytest.raises(NoFreeSlot, match="--max-sessions 2"):
        new_cache(pool)
    del first
    assert pool.num_free == 1
    assert new_cache(pool).index == 0  # the lowest free slot first: busy rows stay consecutive
    assert second.index == 1


def test_a_pass_past_the_slot_length_is_refused_and_changes_nothing():
    target, _ = family_pair("llama", 320)
    kinds = attention_kinds(target.config)
    pool = pool_for(target, max_len=8, poison=False)
    slot = pool.allocate()
    prefill(target, kinds, slot, PROMPTS[0][:6])
    with pytest.raises(ValueError, match="--max-len"):
        forward_one(target, kinds, slot, [1, 2, 3], [6, 7, 8], torch.ones(3, 3, dtype=torch.bool).tril())
    assert slot.get_seq_length() == 6 and pool.plan is None


def test_memory_is_bounded_up_front():
    target, _ = family_pair("gemma2", 320)
    pool = pool_for(target, num_slots=3, max_len=50, poison=False)
    text = target.config
    expected = 2 * text.num_hidden_layers * 3 * text.num_key_value_heads * 51 * text.head_dim * 4
    assert pool.nbytes == slot_bytes(text, 3, 50, torch.float32) == expected
    assert resolve_max_len(text, None) == min(text.max_position_embeddings, 4096)
    with pytest.raises(ValueError, match="--max-len"):
        resolve_max_len(text, text.max_position_embeddings + 1)


def test_a_freed_slot_is_reused_at_once_and_refuses_passes():
    target, _ = family_pair("llama", 320)
    kinds = attention_kinds(target.config)
    pool = pool_for(target, num_slots=1, poison=False)
    first = pool.allocate()
    prefill(target, kinds, first, PROMPTS[0])
    first.free()  # the owner is done though the object lives on (e.g. in a caller's list)
    second = pool.allocate()
    assert second is not None and second.index == first.index and second.get_seq_length() == 0
    with pytest.raises(RuntimeError, match="freed"):
        forward_one(target, kinds, first, [1], [7], torch.ones(1, 1, dtype=torch.bool))
    del first
    assert pool.num_free == 0  # dropping the freed object does not release the row twice
