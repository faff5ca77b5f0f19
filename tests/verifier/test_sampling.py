"""Sampling maths against hand-computed cases, and the acceptance rule's distribution."""
import math

import pytest
import torch

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from launch.reference import target_alone
from launch.sequential import generate
from tests.conftest import tiny_model
from verifier.engine import TargetEngine
from verifier.sampling import SamplingParams, draw, keyed_uniform, processed_probs

PROMPT = [7, 19, 23, 7, 19, 60, 61, 2, 44, 7, 19]


def test_processed_probs_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    full = processed_probs(logits, SamplingParams(temperature=1.0, seed=0))
    torch.testing.assert_close(full, torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    top2 = processed_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    torch.testing.assert_close(top2, torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64))
    # top_p = 0.8: 0.5 + 0.3 reaches it, so only the first two survive
    topp = processed_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    torch.testing.assert_close(topp, torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64))
    hot = processed_probs(torch.log(torch.tensor([[0.8, 0.2]])), SamplingParams(temperature=2.0))
    expected = torch.tensor([0.8, 0.2]).sqrt() / torch.tensor([0.8, 0.2]).sqrt().sum()
    torch.testing.assert_close(hot[0], expected.double())


def test_draw_is_inverse_cdf_and_keys_are_deterministic():
    probs = torch.tensor([[0.5, 0.3, 0.2]] * 4, dtype=torch.float64)
    assert draw(probs, [0.0, 0.49, 0.5, 0.95]) == [0, 0, 1, 2]
    assert keyed_uniform(3, 17) == keyed_uniform(3, 17)
    values = {keyed_uniform(3, t) for t in range(1000)}
    assert len(values) == 1000 and all(0 <= v < 1 for v in values)
    assert keyed_uniform(3, 17) != keyed_uniform(4, 17)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(temperature=1, top_p=0), dict(temperature=1, top_p=1.5),
                                    dict(temperature=1, top_k=-1), dict(temperature=float("nan"))])
def test_bad_sampling_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, seed=1), SamplingParams(temperature=1.0, top_k=5, seed=2),
    SamplingParams(temperature=0.6, top_p=0.9, seed=3), SamplingParams(temperature=1.3, top_k=20, top_p=0.95, seed=4),
], ids=lambda p: f"t{p.temperature}k{p.top_k}p{p.top_p}s{p.seed}")
@pytest.mark.parametrize("draft_kind", ["self", "random"])
def test_sequential_sampling_identical_to_keyed_target_alone(arch, params, draft_kind):
    target = tiny_model(arch)
    draft = target if draft_kind == "self" else tiny_model(arch, seed=5)
    ref = target_alone(target, PROMPT, 72, sampling=params)
    result = generate(TargetEngine(target), DraftEngine(draft, DrafterConfig(gamma=5)), PROMPT, 72, sampling=params)
    assert result.tokens == ref


def test_first_token_distribution_matches_the_target_chi_square():
    """Statistical check of the acceptance rule itself: over many seeds, the first token the
    tree verification emits follows the target's processed distribution (chi-square, fixed
    seeds so the test is deterministic)."""
    target = tiny_model("llama")
    params = SamplingParams(temperature=1.0, top_k=6)
    with torch.inference_mode():
        probs = processed_probs(target(torch.tensor([PROMPT])).logits[0, -1:], params)[0]
    support = probs.nonzero().flatten().tolist()
    likely = sorted(support, key=lambda t: -probs[t])
    engine = TargetEngine(target)
    counts = dict.fromkeys(support, 0)
    num_draws = 3000
    for seed in range(num_draws):
        session = engine.open(PROMPT)
        # the trunk proposes the most likely token, branches the next ones: every path is exercised
        result = engine.verify(session, [likely[0], likely[1]], [[likely[1]], [likely[2], likely[0]]],
                               SamplingParams(temperature=1.0, top_k=6, seed=seed))
        counts[result.appended[0]] += 1
    chi2 = sum((counts[t] - num_draws * probs[t].item()) ** 2 / (num_draws * probs[t].item()) for t in support)
    critical = {5: 20.52}[len(support) - 1]  # df = 5, significance 0.001
    assert chi2 < critical, (chi2, counts)
    assert math.isclose(sum(counts.values()), num_draws)
