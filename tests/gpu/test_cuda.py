"""The engines on a CUDA device (skipped where there is none; CI has none)."""
import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from tests.conftest import TINY_VOCAB, tiny_model
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
