"""The built-in target (SmolLM2-135M-Instruct) with a draft made of its first layers."""
import subprocess
import sys

import pytest

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from launch.sequential import generate
from bench.prompts import humaneval_prompts
from tests.conftest import reference_greedy
from verifier.engine import TargetEngine


def test_first_layers_draft_is_lossless_on_humaneval(builtin_pair):
    config = DrafterConfig(gamma=3, window=2, ngram=4, branches=2, phrases_checked=2)
    target = TargetEngine(builtin_pair.target)
    drafter = DraftEngine(builtin_pair.draft, config)  # one pool across prompts: warm start
    eos = builtin_pair.tokenizer.eos_token_id
    for prompt in humaneval_prompts(5):
        ids = builtin_pair.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ref = reference_greedy(builtin_pair.target, ids, 64, stop=[eos])
        result = generate(target, drafter, ids, 64, stop_token_ids=[eos])
        assert result.tokens == ref


def test_builtin_target_context_limit(builtin_pair):
    engine = TargetEngine(builtin_pair.target)
    with pytest.raises(ValueError, match="context"):
        engine.open([1] * (builtin_pair.target.config.max_position_embeddings + 1))


def test_cli_generate_in_process_prints_completion_and_metrics():
    cmd = [sys.executable, "-m", "ouroboros.cli", "generate", "--in-process", "--max-new-tokens", "12", "def add(a, b):"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("def add(a, b):")
    assert len(done.stdout) > len("def add(a, b):") + 5
    assert "tokens_per_round" in done.stderr and "12 tokens" in done.stderr


def test_cli_reports_bad_flags_clearly():
    cmd = [sys.executable, "-m", "ouroboros.cli", "generate", "--in-process", "--gamma", "0", "x"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--gamma must be >= 1" in done.stderr


@pytest.mark.parametrize("seed", [3, 8])
def test_builtin_sampling_identical_to_keyed_target_alone(builtin_pair, seed):
    from launch.reference import target_alone
    from verifier.sampling import SamplingParams

    params = SamplingParams(temperature=0.8, top_p=0.95, seed=seed)
    eos = builtin_pair.tokenizer.eos_token_id
    ids = builtin_pair.tokenizer(humaneval_prompts(2)[1], add_special_tokens=False)["input_ids"]
    ref = target_alone(builtin_pair.target, ids, 64, [eos], params)
    drafter = DraftEngine(builtin_pair.draft, DrafterConfig(gamma=3, window=2, ngram=4, branches=2, phrases_checked=2))
    result = generate(TargetEngine(builtin_pair.target), drafter, ids, 64, stop_token_ids=[eos], sampling=params)
    assert result.tokens == ref
