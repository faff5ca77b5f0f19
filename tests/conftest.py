"""Shared fixtures: tiny random models built here, and the built-in pair."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from models.loading import load_tokenizer

torch.set_num_threads(int(os.environ.get("OUROBOROS_TEST_THREADS", "2")))

TINY_VOCAB = 96


def tiny_model(arch: str = "llama", seed: int = 0, layers: int = 2) -> torch.nn.Module:
    """A tiny randomly initialised causal LM. Low-entropy on purpose (scaled embeddings), so
    greedy text repeats and drafts get accepted, as with real models."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=TINY_VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=None,
        bos_token_id=None, pad_token_id=0, tie_word_embeddings=True,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    model.generation_config.eos_token_id = None
    return model.eval()


@torch.inference_mode()
def reference_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, stop: list[int] = ()) -> list[int]:
    """The target's own HF greedy generate, stopping after the first stop token."""
    stop = list(stop)
    bounds = {"eos_token_id": stop} if stop else {"min_new_tokens": max_new_tokens}
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, **bounds
    )[0, len(prompt):].tolist()
    for i, token in enumerate(out):
        if token in stop:
            return out[: i + 1]
    return out


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Small random Llamas with the built-in tokenizer (so text works).

    `target` has 8 wide layers of which only layer 0 changes the residual stream (the others'
    output projections are zero): it costs 8 layers, yet the draft `layers:0` built from it
    predicts exactly what it does at about a third of its step time (the shared LM head is most
    of the draft's cost), a perfect draft that clearly pays. `other` is unrelated."""
    tokenizer = load_tokenizer("smollm2-135m")
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, seed, layers, hidden, intermediate in (("target", 0, 8, 128, 2048), ("other", 7, 2, 64, 128)):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
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


@pytest.fixture(scope="session")
def builtin_pair():
    from models.loading import load_pair

    return load_pair("smollm2-135m", "layers:0,1")
