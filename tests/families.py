"""Tiny random pairs of the model families users bring, sharing one small BPE tokenizer.

Targets have 4 layers, drafts 1; sliding-window targets get a window of 8 tokens, far shorter
than a test's text, so the window really slides. Embeddings are scaled so that next-token
distributions are peaked (greedy text repeats and drafts get accepted, as with real models).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Gemma2Config, Gemma2ForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
    MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
    Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
)

WINDOW = 8
PADDING_ROWS = 64  # the padded-vocabulary pair: the target has this many rows past the tokenizer
CORPUS = [
    "def add(a, b):\n    return a + b\n", "Once upon a time there was a fox.", "import numpy as np\n",
    "The quick brown fox jumps over the lazy dog.", "for i in range(10):\n    print(i)\n",
    "class Tree:\n    def __init__(self, left, right):\n        self.left = left\n",
]


def make_tokenizer(vocab_size: int = 320, swap: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on a few lines. `swap` exchanges two token ids: a tokenizer of
    the same size whose ids mean different things (a mismatched pair)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    if swap:
        state = json.loads(tok.to_str())
        vocab = state["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[100:102]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        tok = Tokenizer.from_str(json.dumps(state))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _common(vocab: int, layers: int, hidden: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)


def family_config(family: str, vocab: int, layers: int, hidden: int = 64, is_draft: bool = False):
    c = _common(vocab, layers, hidden)
    window = None if is_draft else WINDOW  # drafts attend fully: the target's window is the point
    if family == "llama":
        return LlamaForCausalLM, LlamaConfig(**c)
    if family == "qwen2":
        return Qwen2ForCausalLM, Qwen2Config(**c)
    if family == "qwen3":
        return Qwen3ForCausalLM, Qwen3Config(**c, head_dim=hidden // 4)
    if family == "mistral":
        return MistralForCausalLM, MistralConfig(**c, sliding_window=window)
    if family == "gemma2":
        return Gemma2ForCausalLM, Gemma2Config(**c, head_dim=hidden // 4, sliding_window=window or 4096,
                                               query_pre_attn_scalar=hidden // 4)
    if family == "phi3":
        return Phi3ForCausalLM, Phi3Config(**c, sliding_window=window)
    if family == "gpt_neox":
        c.pop("num_key_value_heads")
        return GPTNeoXForCausalLM, GPTNeoXConfig(**c)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "qwen2-padded", "qwen3", "mistral", "gemma2", "phi3", "gpt_neox")


def family_model(family: str, vocab: int, layers: int, seed: int, is_draft: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls, config = family_config(family.removesuffix("-padded"), vocab, layers, is_draft=is_draft)
    model = cls(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SCALE if family != "gemma2" else 0.4)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def family_pair(family: str, tokenizer_size: int, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(target, draft). The draft is the target's embeddings and first layer; the target's later
    layers are weakened, so the draft agrees often but not always (both accept and reject paths
    run). The padded pair: the target has PADDING_ROWS output rows past the tokenizer."""
    target_vocab = tokenizer_size + (PADDING_ROWS if family.endswith("-padded") else 0)
    target = family_model(family, target_vocab, 4, seed)
    hidden = target.config.hidden_size
    with torch.no_grad():
        for name, module in target.named_modules():
            in_later_layer = any(f"layers.{i}." in name + "." for i in range(1, 4))
            if in_later_layer and isinstance(module, torch.nn.Linear) and module.out_features == hidden:
                module.weight.mul_(0.3)
            if in_later_layer and "post_" in name and "layernorm" in name:  # Gemma 2 renormalises outputs
                module.weight.fill_(-0.7)  # its RMSNorm scales by (1 + weight)
    draft = family_model(family, tokenizer_size, 1, seed + 1, is_draft=True)
    own = draft.state_dict()
    shared = {k: v[: own[k].shape[0]] if v.shape != own[k].shape else v
              for k, v in target.state_dict().items() if k in own}
    draft.load_state_dict(shared)
    return target, draft


def save_pair(root: Path, family: str, tokenizer: PreTrainedTokenizerFast) -> tuple[str, str]:
    """Saves the pair with the tokenizer as two model directories; returns their paths."""
    target, draft = family_pair(family, len(tokenizer))
    paths = []
    for name, model in (("target", target), ("draft", draft)):
        path = root / family / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]



SCALE = 3.0


def verify_ragged_rounds(engine, sessions: list, prompts: list[list[int]], refs: list[list[int]], new_tokens: int,
                         vocab: int, seed: int = 0) -> None:
    """Verify the sessions together round after round until each has `new_tokens` past its
    prompt: trunks right (per `refs`) for a random number of tokens, then a random token, and a
    branch, so ragged batched passes accept and reject."""
    import random

    rng = random.Random(seed)
    while any(len(s.tokens) - len(p) < new_tokens for s, p in zip(sessions, prompts)):
        work = []
        for session, prompt, ref in zip(sessions, prompts, refs):
            done = len(session.tokens) - len(prompt)
            if done < new_tokens:
                right = ref[done : done + rng.randrange(0, 6)]
                work.append((session, right + [rng.randrange(vocab)], [right[:1] + [3]], None))
        engine.verify_batch(work)
