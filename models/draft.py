"""Distilled drafts: build one from a target, ship only what the target cannot supply, load it back."""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

try:  # transformers >= 5: build a model without initialising weights that are loaded next
    from transformers.initialization import no_init_weights
except ImportError:  # older: initialise them (slower, same result)
    from contextlib import nullcontext as no_init_weights

FORMAT = "ouroboros-draft"
FORMAT_VERSION = 1
WEIGHTS_FILE = "draft.safetensors"
META_FILE = "draft.json"
EMBEDDING_KEY = "model.embed_tokens.weight"


def build_student(target: nn.Module, layers: list[int], vocab_ids: torch.LongTensor | None) -> nn.Module:
    """A draft of the target's class: its embedding (copied, frozen), the chosen decoder layers,
    its final norm, and an output layer made of the target's output-embedding rows `vocab_ids`
    (all rows when None). Row r of the head predicts token `draft_token_ids[r]`."""
    check_layers(target, layers)
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    config.tie_word_embeddings = False
    if getattr(config, "layer_types", None):
        config.layer_types = [target.config.layer_types[i] for i in layers]
    device = target.get_input_embeddings().weight.device
    dtype = target.get_input_embeddings().weight.dtype
    student = type(target)(config).to(device=device, dtype=dtype)
    inner, source = student.base_model, target.base_model
    inner.embed_tokens.weight.data.copy_(source.embed_tokens.weight.data)
    inner.embed_tokens.weight.requires_grad_(False)
    for slot, index in enumerate(layers):
        inner.layers[slot].load_state_dict(source.layers[index].state_dict())
    inner.norm.load_state_dict(source.norm.state_dict())
    head = target.get_output_embeddings().weight.detach()
    if vocab_ids is not None:
        vocab_ids = vocab_ids.to(device=device, dtype=torch.long)
        if vocab_ids.ndim != 1 or vocab_ids.numel() == 0 or int(vocab_ids.max()) >= head.shape[0] or int(vocab_ids.min()) < 0:
            raise ValueError(f"vocab_ids must be token ids within 0..{head.shape[0] - 1}")
        student.lm_head = nn.Linear(config.hidden_size, vocab_ids.numel(), bias=False, device=device, dtype=dtype)
        student.lm_head.weight.data.copy_(head[vocab_ids])
        student.register_buffer("draft_token_ids", vocab_ids.clone())
    else:
        student.lm_head.weight.data.copy_(head)
    return student.eval()


class TargetEmbedding(nn.Module):
    """All a shipped draft takes from its target: the config and the input embedding
    (models.loading.read_embedding reads it alone, so a drafter never loads the target's layers)."""

    def __init__(self, config, weight: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding.from_pretrained(weight, freeze=True)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding


def _draft_shell(target: TargetEmbedding, layers: list[int], vocab_ids: torch.LongTensor | None) -> nn.Module:
    """A draft of the target's class and shapes, its embedding the target's, every other weight
    left to the shipped file (build_student's layout, without the target's layers)."""
    check_layers(target, layers)
    config = copy.deepcopy(target.config)
    config.num_hidden_layers, config.tie_word_embeddings = len(layers), False
    if getattr(config, "layer_types", None):
        config.layer_types = [target.config.layer_types[i] for i in layers]
    weight = target.get_input_embeddings().weight
    with no_init_weights():
        student = AutoModelForCausalLM.from_config(config, dtype=weight.dtype)
    student.get_input_embeddings().weight.data.copy_(weight)
    if vocab_ids is not None:
        student.lm_head = nn.Linear(config.hidden_size, vocab_ids.numel(), bias=False, dtype=weight.dtype)
        student.register_buffer("draft_token_ids", vocab_ids.to(torch.long).clone())
    return student


def check_layers(target: nn.Module, layers: list[int]) -> None:
    num_layers = target.config.num_hidden_layers
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"--layers must be target layer indices within 0..{num_layers - 1}, got {list(layers)}")


def shipped_state(student: nn.Module) -> dict[str, torch.Tensor]:
    """Everything the draft needs beyond the target's file: all of its state but the embedding."""
    return {k: v for k, v in student.state_dict().items() if k != EMBEDDING_KEY}


def target_fingerprint(target: nn.Module) -> list[float]:
    """A few embedding values: enough to tell a draft was made for another target's weights."""
    return [round(float(x), 4) for x in target.get_input_embeddings().weight[:2, :4].detach().float().flatten()]


def save_draft(
    student: nn.Module, out_dir: str | os.PathLike, target_name: str, layers: list[int], meta: dict,
    dtype: torch.dtype = torch.float16, fingerprint: list[float] | None = None,
) -> Path:
    """Write OUT/draft.safetensors (decoder layers, final norm, head, draft_token_ids; floats in
    `dtype`, never the embedding) and OUT/draft.json describing it. Returns the weights path.
    float16 halves the file and, unlike bfloat16, left every argmax of a float32 draft as it was."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in shipped_state(student).items()}
    for key, value in state.items():
        if value.is_floating_point():
            if dtype == torch.float16 and value.abs().max() > torch.finfo(torch.float16).max:
                raise ValueError(f"{key} overflows float16: save the draft with dtype=torch.bfloat16")
            state[key] = value.to(dtype)
    token_ids = getattr(student, "draft_token_ids", None)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "target": target_name,
        "architecture": type(student).__name__,
        "layers": list(layers),
        "hidden_size": student.config.hidden_size,
        "target_vocab_size": student.config.vocab_size,
        "vocab_size": int(token_ids.numel()) if token_ids is not None else student.config.vocab_size,
        "num_params": sum(v.numel() for k, v in state.items() if k != "draft_token_ids"),
        "num_params_with_embedding": sum(p.numel() for p in student.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "target_fingerprint": fingerprint,
        "training": meta,
    }
    atomic_write(out / WEIGHTS_FILE, lambda path: save_file(state, path, metadata={"format": FORMAT}))
    atomic_write(out / META_FILE, lambda path: Path(path).write_text(json.dumps(info, indent=2) + "\n"))
    return out / WEIGHTS_FILE


def load_draft_dir(
    path: str | os.PathLike, target: nn.Module, device: str = "cpu", dtype: str | torch.dtype = "float32",
    target_name: str | None = None,
) -> nn.Module:
    """Assemble a standard transformers draft from the target's embedding and the shipped part;
    `target` is the target model or just its TargetEmbedding."""
    path = Path(path)
    if not (path / META_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise ValueError(f"{path} is not a draft directory: it needs {META_FILE} and {WEIGHTS_FILE}")
    info = json.loads((path / META_FILE).read_text())
    _check_matches(info, target, target_name, path)
    state = load_file(str(path / WEIGHTS_FILE))
    token_ids = state.get("draft_token_ids")
    if isinstance(target, TargetEmbedding):
        student = _draft_shell(target, info["layers"], token_ids)
    else:
        student = build_student(target, info["layers"], token_ids)
    missing, unexpected = student.load_state_dict(state, strict=False)
    if set(missing) != {EMBEDDING_KEY} or unexpected:
        raise ValueError(f"{path / WEIGHTS_FILE} does not fit the target: missing {missing}, unexpected {unexpected}")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype  # "float32", "bfloat16", "float16"
    return student.to(device=device, dtype=dtype).eval()


def _check_matches(info: dict, target: nn.Module, target_name: str | None, path: Path) -> None:
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / META_FILE}: not an {FORMAT} v{FORMAT_VERSION} file")
    made_for = info["target"]
    if target_name is not None and target_name != made_for:
        raise ValueError(f"draft {path} was made for target {made_for!r}, not {target_name!r}")
    config = target.config
    expected = {"hidden_size": config.hidden_size, "target_vocab_size": config.vocab_size}
    for key, value in expected.items():
        if info[key] != value:
            raise ValueError(f"draft {path} was made for target {made_for!r} with {key} {info[key]}; this target has {value}")
    if max(info["layers"]) >= config.num_hidden_layers:
        raise ValueError(f"draft {path} uses target layers {info['layers']}; this target has {config.num_hidden_layers}")
    shipped = info.get("target_fingerprint")
    if shipped and not all(math.isclose(a, b, rel_tol=2e-2, abs_tol=2e-3) for a, b in zip(shipped, target_fingerprint(target))):
        raise ValueError(f"draft {path} was made for target {made_for!r}: this target's embedding differs")


def atomic_write(final: Path, write: Callable[[str], object]) -> None:
    """Write through a temporary file in the same directory, then rename over `final`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
