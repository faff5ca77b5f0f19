"""The family matrix through the real two-process pipeline: each tiny pair (windows that slide,
a padded vocabulary) streams exactly what the target alone decodes, greedy and seeded sampling,
with several requests at once so passes are batched."""
import pytest

from models.loading import load_model
from launch.reference import target_alone
from launch.serve import LocalPipeline
from protocol.client import Client
from tests.conftest import reference_greedy
from tests.e2e.conftest import generate_concurrently, serve_args
from tests.families import FAMILIES, make_tokenizer, save_pair
from verifier.sampling import SamplingParams

PROMPTS = ["def add(a, b):\n    return", "The quick brown fox", "for i in range(10):"]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    tokenizer = make_tokenizer()
    root = tmp_path_factory.mktemp("families")
    return tokenizer, {family: save_pair(root, family, tokenizer) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_equals_the_target_alone(family, family_dirs):
    tokenizer, dirs = family_dirs
    target_dir, draft_dir = dirs[family]
    target = load_model(target_dir)
    eos = [tokenizer.eos_token_id]
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    sampling = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=5)
    greedy_refs = [reference_greedy(target, ids, NEW_TOKENS, stop=eos) for ids in prompts]
    sampled_ref = target_alone(target, prompts[0], NEW_TOKENS, eos, sampling)
    # --pre-drafts on: the speculation cache drafts ahead for the likely outcomes (drafter.outcomes)
    with LocalPipeline(serve_args(target_dir, draft_dir, "--pre-drafts", "on")) as pipeline:
        results = generate_concurrently(pipeline.endpoint, prompts, NEW_TOKENS)
        with Client(pipeline.endpoint, timeout=60) as client:
            sampled = client.generate(prompts[0], max_new_tokens=NEW_TOKENS, temperature=0.8, top_k=50, top_p=0.9,
                                      seed=5)
    assert [r.token_ids if r else None for r in results] == greedy_refs, family
    assert sum(r.metrics["accepted_tokens"] for r in results if r) > 0, "no draft was ever accepted"
    assert sampled.token_ids == sampled_ref, family
