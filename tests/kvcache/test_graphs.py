"""The bucketed static pass that CUDA graphs capture (kvcache.graphs), run eagerly on the CPU: it
computes what plain caches compute, for every attention kind, with padding rows and padding
tokens; and an engine verifying through it decodes the target's own greedy text. The same
passes captured and replayed on CUDA are checked in tests/gpu."""
import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from kvcache.attention import attention_kinds, prefill
from kvcache.graphs import MAX_GRAPHS, MAX_TOKENS, MAX_WIDTH, MIN_LENGTH, Bucket, GraphedPasses, bucket_for, reachable_buckets
from tests.conftest import TINY_VOCAB, reference_greedy, tiny_model
from tests.families import family_pair
from tests.kvcache.test_slots import PROMPTS, alone, assert_same_entries, pool_for, rows_for
from verifier.engine import TargetEngine


def test_buckets_round_up_to_powers_of_two_within_bounds():
    assert bucket_for(3, 5, 40, max_rows=16, max_len=4096) == Bucket(4, 8, MIN_LENGTH)
    assert bucket_for(1, 1, 300, max_rows=16, max_len=4096) == Bucket(1, 1, 512)
    assert bucket_for(1, 1, 4000, max_rows=16, max_len=4096) == Bucket(1, 1, 4096)
    assert bucket_for(1, 1, 100, max_rows=16, max_len=120) == Bucket(1, 1, 120)  # never past the slots
    assert bucket_for(1, MAX_WIDTH + 1, 100, max_rows=16, max_len=4096) is None  # a prefill: eagerly
    assert bucket_for(16, 32, 100, max_rows=16, max_len=4096) is None  # 512 tokens > MAX_TOKENS
    assert bucket_for(8, MAX_TOKENS // 8, 100, max_rows=8, max_len=4096) is not None
    assert bucket_for(5, 1, 100, max_rows=4, max_len=4096) is None  # more rows than slots


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "qwen2-padded", "phi3"])
def test_static_pass_equals_each_row_alone_with_padding_rows_and_tokens(family):
    target, _ = family_pair(family, 320)
    kinds = attention_kinds(target.config)
    pool = pool_for(target, num_slots=5, max_len=300)  # poisoned with NaN: nothing may leak from it
    held = [pool.allocate() for _ in range(5)]
    slots = [held[3], held[0], held[2]]  # scattered, out of order
    prompts = PROMPTS[2], PROMPTS[0], PROMPTS[3]
    for slot, prompt in zip(slots, prompts):
        prefill(target, kinds, slot, prompt)
    # 3 ragged rows -> a bucket of 4 rows x 8 tokens over MIN_LENGTH columns: a padding row, padding tokens
    work = [(prompts[0], [6, 7, 8, 9, 10]), (prompts[1], [11]), (prompts[2], [12, 13, 14])]
    graphs = GraphedPasses(target, kinds, pool, capture=False)
    bucket = graphs.bucket(slots, rows_for(work))
    assert bucket == Bucket(4, 8, 256)
    got = graphs.forward(slots, rows_for(work), bucket)
    want, reference = alone(target, kinds, work)
    for g, w, (_, new) in zip(got, want, work):
        assert g.shape[0] == len(new)
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert_same_entries(slots, reference)
    assert pool.lengths[held[1].index] == pool.lengths[held[4].index] == 0  # untouched rows stay empty


def test_a_failed_static_pass_leaves_the_slot_lengths_as_they_were():
    target, _ = family_pair("llama", 320)
    kinds = attention_kinds(target.config)
    pool = pool_for(target, num_slots=2, max_len=300)
    slot = pool.allocate()
    prefill(target, kinds, slot, PROMPTS[0])
    graphs = GraphedPasses(target, kinds, pool, capture=False)
    rows = rows_for([(PROMPTS[0], [1000])])  # an id past the vocabulary: the embedding fails
    with pytest.raises(IndexError):
        graphs.forward([slot], rows, graphs.bucket([slot], rows))
    assert slot.get_seq_length() == len(PROMPTS[0])
    assert pool.plan is None
    long_prompt = [t % 300 for t in range(296)]
    full = pool.allocate()
    prefill(target, kinds, full, long_prompt)
    too_long = rows_for([(long_prompt, [1, 2, 3, 4, 5])])  # 301 > the slots' 300
    assert graphs.bucket([full], too_long) is None  # the eager pass refuses it, naming --max-len


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_engine_through_static_passes_decodes_the_targets_greedy_text(arch):
    """Ragged requests with drafts right for two tokens then wrong, and a wrong branch, verified
    in bucketed static passes, give exactly HF's greedy text, and the caches stay in step."""
    model = tiny_model(arch)
    prompts = [[5, 17, 33, 2, 40, 41, 5, 17], [9], [3, 4, 5, 6, 3, 4, 70, 71, 72]]
    expected = [reference_greedy(model, prompt, 24) for prompt in prompts]
    engine = TargetEngine(model, max_sessions=4, max_len=200)
    engine.graphs = GraphedPasses(model, engine.kinds, engine.slots, capture=False)
    sessions = [engine.open(prompt) for prompt in prompts]
    rounds = 0
    while any(len(s.tokens) - s.num_prompt < 24 for s in sessions):
        work = []
        for session, want in zip(sessions, expected):
            done = len(session.tokens) - session.num_prompt
            right = want[done : done + 2]
            wrong = (want[min(done + 2, 23)] + 1) % TINY_VOCAB
            work.append((session, right + [wrong], [[wrong, 1]], None))
        engine.verify_batch(work if rounds % 2 else work[:1])  # one row, then all three
        rounds += 1
    for session, want in zip(sessions, expected):
        assert session.tokens[session.num_prompt : session.num_prompt + 24] == want
        assert session.cache_length == len(session.tokens) - 1
    assert {b.rows for b in engine.graphs.passes} == {1, 4}


def compare_draft_engines(family: str, device: str, capture: bool) -> DraftEngine:
    """The same lookahead drafting (window, pool phrases, one by one then batched) through static
    passes and through eager ones: same tokens, same cache lengths and entries, same pool."""
    _, draft = family_pair(family, 320)
    draft = draft.to(device)
    config = DrafterConfig(window=3, ngram=3, phrases_checked=2)
    eager, static = DraftEngine(draft, config, cuda_graphs=False), DraftEngine(draft, config)
    static.graphs = GraphedPasses(draft, static.kinds, static.slots, capture=capture)
    prompts = [[5, 9, 13, 2, 7, 30, 11, 5, 9, 13], [3, 4, 5], [8, 1, 2, 9, 9, 4, 17, 12, 6, 50, 3]]
    pairs = [(eager.open(p), static.open(p)) for p in prompts]
    for step in range(6):
        if step % 2:
            eager.step_batch([e for e, _ in pairs])
            static.step_batch([s for _, s in pairs])
        else:
            for e, s in pairs:
                eager.step(e)
                static.step(s)
    for e, s in pairs:
        assert e.tokens == s.tokens and e.cache_length == s.cache_length == len(e.tokens) - 1
        for ours, theirs in zip(s.cache.layers, e.cache.layers):
            torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-3)
    assert eager.pool.most_recent(prompts[0][-1], 4) == static.pool.most_recent(prompts[0][-1], 4)
    return static


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_draft_engine_through_static_passes_equals_eager_passes(family):
    static = compare_draft_engines(family, "cpu", capture=False)
    assert {b.rows for b in static.graphs.passes} == {1, 4}


@pytest.mark.parametrize("max_rows, max_len", [(16, 4096), (8, 4096 + 40), (3, 200), (16, 300)])
def test_every_bucket_a_pass_can_reach_is_listed_and_a_default_pool_keeps_them_all(max_rows, max_len):
    reachable = set(reachable_buckets(max_rows, max_len))
    lengths = sorted({1, 2, 255, 256, 257, 1000, 4000, max_len - 1, max_len} & set(range(1, max_len + 1)))
    met = {bucket_for(rows, width, length, max_rows, max_len) for rows in range(1, max_rows + 1)
           for width in range(1, MAX_WIDTH + 1) for length in lengths} - {None}
    assert met <= reachable and {(b.rows, b.width) for b in met} == {(b.rows, b.width) for b in reachable}
    assert len(reachable) <= MAX_GRAPHS  # the verifier's and the drafter's default pools: nothing is dropped


@pytest.mark.parametrize("cap", ["count", "bytes"])
def test_graphs_past_the_cap_are_dropped_least_recently_used_and_made_again(monkeypatch, cap):
    model = tiny_model("llama")
    prompt = [5, 17, 33, 2, 40, 41, 5, 17]
    expected = reference_greedy(model, prompt, 16)
    engine = TargetEngine(model, max_sessions=2, max_len=200)
    engine.graphs = GraphedPasses(model, engine.kinds, engine.slots, capture=False)
    if cap == "count":
        monkeypatch.setattr("kvcache.graphs.MAX_GRAPHS", 2)
    else:  # room for the static inputs of the two widest buckets, no more
        widest = [engine.graphs._static(Bucket(1, w, 200)).nbytes for w in (4, 8)]
        engine.graphs.passes.clear()
        monkeypatch.setattr("kvcache.graphs.MAX_STATIC_BYTES", sum(widest))
    session = engine.open(prompt)
    seen = set()
    for step in range(16):  # widths 1, 2, 4, 8 in turn: four buckets through a cache of two
        done = len(session.tokens) - session.num_prompt
        if done >= 16:
            break
        draft = expected[done : done + (0, 1, 3, 7)[step % 4]]
        engine.verify(session, draft)
        seen |= set(engine.graphs.passes)
        kept = engine.graphs.passes.values()
        assert len(kept) <= 2 if cap == "count" else sum(static.nbytes for static in kept) <= sum(widest)
    assert len(seen) >= 3
    assert session.tokens[session.num_prompt : session.num_prompt + 16] == expected
    assert session.cache_length == len(session.tokens) - 1


def test_common_buckets_made_at_start_up_leave_no_trace_and_serve_later_passes():
    """capture_common makes every row bucket x START_WIDTHS at the shortest length on a borrowed
    slot, gives it back empty, and a request afterwards reuses those buckets (none made anew for
    its short passes) and decodes HF's greedy text, with the slot it gets as if fresh."""
    model = tiny_model("llama")
    prompt = [5, 17, 33, 2, 40, 41, 5, 17]
    expected = reference_greedy(model, prompt, 16)
    engine = TargetEngine(model, max_sessions=3, max_len=200)
    engine.graphs = GraphedPasses(model, engine.kinds, engine.slots, capture=False)
    assert engine.graphs.capture_common(widths=(1, 2, 4)) == 9  # rows 1, 2, 4 (3 slots) x 3 widths
    made = set(engine.graphs.passes)
    assert made == {Bucket(r, w, 200) for r in (1, 2, 4) for w in (1, 2, 4)}  # 200: the slot length
    assert engine.slots.num_free == 3 and engine.slots.lengths == [0, 0, 0]
    fresh = GraphedPasses(model, engine.kinds, engine.slots, capture=False)
    assert fresh.capture_common(widths=(1, 2), max_rows=2) == 4  # a batch limit of 2: rows 1, 2 only
    assert {b.rows for b in fresh.passes} == {1, 2}
    session = engine.open(prompt)
    while len(session.tokens) - session.num_prompt < 16:
        done = len(session.tokens) - session.num_prompt
        engine.verify(session, expected[done : done + 2] + [(expected[min(done + 2, 15)] + 1) % TINY_VOCAB])
    assert session.tokens[session.num_prompt : session.num_prompt + 16] == expected
    assert session.cache_length == len(session.tokens) - 1
    assert set(engine.graphs.passes) == made  # widths 4 (3 drafted + the root) and less: all ready


def test_no_common_buckets_without_a_free_slot():
    model = tiny_model("llama")
    engine = TargetEngine(model, max_sessions=1, max_len=64)
    engine.graphs = GraphedPasses(model, engine.kinds, engine.slots, capture=False)
    held = engine.slots.allocate()
    assert engine.graphs.capture_common() == 0 and not engine.graphs.passes
    assert held.get_seq_length() == 0 and not held.is_free
