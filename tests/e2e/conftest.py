"""Fixtures for end-to-end tests: real processes on a small model that has a real tokenizer."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from launch.cli import build_parser
from launch.models import load_tokenizer
from launch.serve import LocalPipeline


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Small random Llamas with the built-in tokenizer (so text works).

    `target` has 8 layers of which only layer 0 changes the residual stream (the others'
    output projections are zero): it costs 8 layers, yet the draft `layers:0` built from it
    predicts exactly what it does, like a perfect and cheap draft. `other` is unrelated."""
    tokenizer = load_tokenizer("smollm2-135m")
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, seed, layers, hidden in (("target", 0, 8, 128), ("other", 7, 2, 64)):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
        )
        model = LlamaForCausalLM(config)
        with torch.no_grad():  # a peaked next-token distribution, like a trained model's
            model.model.embed_tokens.weight.mul_(4.0)
            for layer in model.model.layers[1:]:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


def serve_args(target: str, draft: str, *extra: str):
    return build_parser().parse_args(
        ["serve", "--target", target, "--draft", draft, "--port", "0", "--ready-timeout", "120",
         "--draft-timeout", "0.5", "--gamma", "6", *extra]
    )


@pytest.fixture(scope="module")
def self_draft_pipeline(tiny_dirs):
    """The pipeline with a target-identical draft: every pre-draft should hold."""
    with LocalPipeline(serve_args(tiny_dirs["target"], "layers:0")) as pipeline:
        yield pipeline
