"""bfloat16 through the real two-process pipeline: with batch-invariant passes (our CPU kernels)
it streams exactly what our engine decodes without drafts, several requests at once."""
import pytest
import torch

from kvcache import cpu_gemm
from models.loading import for_engine, load_model
from launch.sequential import engine_alone
from launch.serve import LocalPipeline
from tests.e2e.conftest import generate_concurrently, serve_args
from tests.families import make_tokenizer, save_pair
from verifier.engine import TargetEngine

pytestmark = pytest.mark.skipif(cpu_gemm.bf16_unusable_reason() is not None,
                                reason=f"no bfloat16 kernels here: {cpu_gemm.bf16_unusable_reason()}")
PROMPTS = ["def add(a, b):\n    return", "The quick brown fox", "for i in range(10):"]
NEW_TOKENS = 32


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_the_bf16_pipeline_equals_the_engine_alone(family, tmp_path):
    tokenizer = make_tokenizer()
    target_dir, draft_dir = save_pair(tmp_path, family, tokenizer)
    engine = TargetEngine(for_engine(load_model(target_dir, "cpu", "bfloat16")))
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    refs = [engine_alone(engine, ids, NEW_TOKENS) for ids in prompts]
    with LocalPipeline(serve_args(target_dir, draft_dir, "--dtype", "bfloat16")) as pipeline:
        results = generate_concurrently(pipeline.endpoint, prompts, NEW_TOKENS)
    assert [r.token_ids if r else None for r in results] == refs, family
    assert sum(r.metrics["accepted_tokens"] for r in results if r) > 0, "no draft was ever accepted"
