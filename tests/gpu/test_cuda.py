"""The engines on a CUDA device (skipped where there is none; CI has none)."""
import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from tests.conftest import TINY_VOCAB, tiny_model
from tests.families import family_pair
from verifier.engine import TargetEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPTS = [[5, 17, 33, 2, 40, 41, 5, 17], [9], [3, 4, 5, 6, 3, 4, 70, 71, 72]]


@torch.inference_mode()
def cuda_greedy(model, prompt, max_new_tokens):
    ids = torch.tensor([prompt], device="cuda")
    out = model.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_verification_on_cuda_is_the_targets_greedy_output(arch):
    """Ragged requests verified together on the GPU, each with a draft that is right for two
    tokens and then wrong, decode exactly the target's own greedy text (float32)."""
    model = tiny_model(arch).to("cuda")
    expected = [cuda_greedy(model, prompt, 24) for prompt in PROMPTS]
    engine = TargetEngine(model)
    sessions = [engine.open(prompt) for prompt in PROMPTS]
    while any(len(s.tokens) - s.num_prompt < 24 for s in sessions):
        work = []
        for session, want in zip(sessions, expected):
            done = len(session.tokens) - session.num_prompt
            right = want[done : done + 2]
            work.append((session, right + [(want[min(done + 2, 23)] + 1) % TINY_VOCAB], [], None))
        engine.verify_batch(work)
    for session, want in zip(sessions, expected):
        assert session.tokens[session.num_prompt : session.num_prompt + 24] == want
        assert session.cache_length == len(session.tokens) - 1
    assert engine.graphs is not None and engine.graphs.capture and engine.graphs.num_captured >= 1  # replayed


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "qwen2-padded"])
def test_cuda_graph_replays_equal_eager_passes(family):
    """The same rounds through captured graphs and through eager passes (float32): same logits,
    same caches, across buckets of one row and of three rows (padded to four), and sliding windows."""
    target, _ = family_pair(family, 320)
    target = target.to("cuda")
    graphed, eager = TargetEngine(target, max_sessions=4), TargetEngine(target, max_sessions=4, cuda_graphs=False)
    assert graphed.graphs is not None and eager.graphs is None
    prompts = [[5, 9, 13, 2, 7, 30, 11, 5, 9], [3, 4, 5], [8, 1, 2, 9, 9, 4, 17, 12, 6, 50, 3]]
    pairs = [(graphed.open(p), eager.open(p)) for p in prompts]
    for step in range(12):
        chosen = pairs if step % 3 else pairs[:1]
        trunk = [(7 * step + i) % 300 for i in range(1 + step % 4)]
        got = graphed.verify_batch([(g, trunk, [[trunk[0], 2]], None) for g, _ in chosen])
        want = eager.verify_batch([(e, trunk, [[trunk[0], 2]], None) for _, e in chosen])
        assert [r.appended for r in got] == [r.appended for r in want]
    for g, e in pairs:
        assert g.tokens == e.tokens and g.cache_length == e.cache_length == len(g.tokens) - 1
        for ours, theirs in zip(g.cache.layers, e.cache.layers):
            torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-3)
    assert graphed.graphs.capture and graphed.graphs.num_captured >= 2


def test_batched_draft_passes_on_cuda_equal_one_by_one():
    model = tiny_model("llama").to("cuda")
    config = DrafterConfig(window=3, ngram=3, phrases_checked=0, seed_pool_from_text=False)
    one, many = DraftEngine(model, config), DraftEngine(model, config)
    alone, batched = [one.open(p) for p in PROMPTS], [many.open(p) for p in PROMPTS]
    for _ in range(5):
        for session in alone:
            one.step(session)
        many.step_batch(batched)
    for a, b in zip(alone, batched):
        assert a.tokens == b.tokens and a.cache_length == b.cache_length == len(a.tokens) - 1
        for la, lb in zip(a.cache.layers, b.cache.layers):
            torch.testing.assert_close(la.keys, lb.keys, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_draft_passes_replayed_as_cuda_graphs_equal_eager_passes(family):
    from tests.kvcache.test_graphs import compare_draft_engines

    static = compare_draft_engines(family, "cuda", capture=True)
    assert static.graphs.capture and static.graphs.num_captured >= 2
    assert DraftEngine(static.model, static.config).graphs is not None  # on by default on CUDA


def read_back(module, args, kwargs):
    hidden = args[0] if args else kwargs["hidden_states"]
    float(hidden.sum())  # a host sync: not allowed while a CUDA graph is being captured


def test_a_model_that_cannot_be_captured_runs_eagerly_with_the_same_output():
    """A forward with a host sync inside (here a hook reading a value back, as a data-dependent
    rope or MoE routing would) cannot be captured: the engine warns once, runs every pass
    eagerly from then on, on the stream it used before, and still decodes the greedy text."""
    model = tiny_model("llama").to("cuda")
    expected = cuda_greedy(model, PROMPTS[0], 12)

    model.model.layers[0].register_forward_pre_hook(read_back, with_kwargs=True)
    engine = TargetEngine(model)
    stream = torch.cuda.current_stream()
    session = engine.open(PROMPTS[0])
    while len(session.tokens) - session.num_prompt < 12:
        engine.verify(session, [])
    assert session.tokens[session.num_prompt : session.num_prompt + 12] == expected
    assert not engine.graphs.capture and engine.graphs.num_captured == 0
    assert torch.cuda.current_stream() == stream


def test_common_shapes_captured_at_start_up_serve_a_request_without_new_captures():
    """capture_common captures every row bucket x START_WIDTHS before any request; a short
    request afterwards replays them (no capture during it) and decodes the greedy text."""
    from kvcache.graphs import START_WIDTHS

    model = tiny_model("llama").to("cuda")
    expected = cuda_greedy(model, PROMPTS[0], 24)
    engine = TargetEngine(model, max_sessions=4)
    assert engine.graphs.capture_common() == engine.graphs.num_captured == 3 * len(START_WIDTHS)  # rows 1, 2, 4
    assert engine.slots.num_free == 4 and engine.slots.lengths == [0] * 4
    session = engine.open(PROMPTS[0])
    while len(session.tokens) - session.num_prompt < 24:
        done = len(session.tokens) - session.num_prompt
        engine.verify(session, expected[done : done + 3] + [(expected[min(done + 3, 23)] + 1) % TINY_VOCAB])
    assert session.tokens[session.num_prompt : session.num_prompt + 24] == expected
    assert engine.graphs.num_captured == 3 * len(START_WIDTHS)


def test_start_up_capture_of_a_model_that_cannot_be_captured_turns_graphs_off():
    model = tiny_model("llama").to("cuda")
    expected = cuda_greedy(model, PROMPTS[0], 12)
    model.model.layers[0].register_forward_pre_hook(read_back, with_kwargs=True)
    engine = TargetEngine(model)
    stream = torch.cuda.current_stream()
    assert engine.graphs.capture_common() == 0
    assert engine.graphs.capture_failed and not engine.graphs.capture and engine.slots.num_free == 16
    assert torch.cuda.current_stream() == stream
    session = engine.open(PROMPTS[0])
    while len(session.tokens) - session.num_prompt < 12:
        engine.verify(session, [])
    assert session.tokens[session.num_prompt : session.num_prompt + 12] == expected
