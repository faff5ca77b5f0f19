"""Where a train-draft run's student starts: a fresh draft of target layers with a vocabulary
chosen from the data, a shipped draft (--init), or that draft with a new vocabulary (--revocab);
and what it learns from: the target's distribution over the draft's vocabulary."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.checkpoint import Progress
from distill.data import coverage, frequent_vocab, stream_vocab
from models.draft import build_student, load_draft_dir
from models.loading import BUILTIN_DRAFT, BUILTIN_DRAFT_DIR

REVOCAB_SAMPLE_TOKENS = 2_000_000  # --revocab counts this much of the run's stream: its first hour on a CPU


def initial_draft(config, target) -> torch.nn.Module:
    """--init: the draft to start from, which must have the run's layers and vocabulary size."""
    path = BUILTIN_DRAFT_DIR if config.init == BUILTIN_DRAFT else Path(config.init)
    student = load_draft_dir(path, target, config.device, "float32", target_name=config.target)
    layers = tuple(json.loads((path / "draft.json").read_text())["layers"])
    rows = student.get_output_embeddings().weight.shape[0]
    if layers != config.layers or (rows != (config.vocab_size or target.config.vocab_size) and not config.revocab):
        raise ValueError(f"--init {config.init} has layers {','.join(map(str, layers))} and a {rows}-token "
                         f"vocabulary: pass --layers {','.join(map(str, layers))} --vocab-size {rows}")
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(name != "model.embed_tokens.weight")
    return student.train()


def new_vocabulary(config, target, draft, tokenizer, files, progress: Progress) -> torch.nn.Module:
    """--revocab: the draft with its output vocabulary chosen from this run's data mix. Its
    layers and norm are kept; a head row is the draft's where it had the token, else the
    target's own output-embedding row (where every draft's head starts)."""
    full_size = target.config.vocab_size
    vocab_ids, counts = stream_vocab(tokenizer, files, config.vocab_size or full_size, full_size, config.seed,
                                     REVOCAB_SAMPLE_TOKENS)
    progress.vocab_coverage = coverage(vocab_ids, counts)
    old_ids = draft.draft_token_ids.tolist() if hasattr(draft, "draft_token_ids") else list(range(full_size))
    student = build_student(target, list(config.layers), vocab_ids)
    student.model.layers.load_state_dict(draft.model.layers.state_dict())
    student.model.norm.load_state_dict(draft.model.norm.state_dict())
    old_row = {token: row for row, token in enumerate(old_ids)}
    kept = [(new, old_row[t]) for new, t in enumerate(vocab_ids.tolist()) if t in old_row]
    if kept:
        new_rows, old_rows = torch.tensor(kept, dtype=torch.long).T
        student.lm_head.weight.data[new_rows] = draft.lm_head.weight.data[old_rows].to(student.lm_head.weight.dtype)
    print(f"--revocab: {len(kept)} of {len(vocab_ids)} tokens kept from --init, {len(vocab_ids) - len(kept)} new")
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(name != "model.embed_tokens.weight")
    return student.train()


def choose_vocab(config, tokenizer, files, full_size: int, progress: Progress) -> torch.LongTensor | None:
    if config.vocab_size == 0 or config.vocab_size >= full_size:
        return None
    vocab_ids, counts = frequent_vocab(tokenizer, files, config.vocab_size, full_size, config.seed)
    progress.vocab_coverage = coverage(vocab_ids, counts)
    return vocab_ids


def init_training(config) -> dict | None:
    """--init's own training record, so a fine-tuned draft's file tells both stages."""
    path = BUILTIN_DRAFT_DIR if config.init == BUILTIN_DRAFT else Path(config.init) if config.init else None
    return json.loads((path / "draft.json").read_text()).get("training") if path else None


def distill_loss(target: torch.nn.Module, head_rows: torch.Tensor, student: torch.nn.Module,
                 batch: torch.Tensor, is_bf16: bool = False) -> tuple[torch.Tensor, float]:
    """KL(teacher || student) per token, both softmaxes over the draft's vocabulary: the
    teacher's logits are its final hidden states times the same output-embedding rows the
    draft's head started from. Also returns the top-1 agreement on the batch. With is_bf16 both
    forwards run under bfloat16 autocast (weights and the loss stay float32)."""
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=is_bf16):
        with torch.no_grad():
            hidden = target.base_model(input_ids=batch, use_cache=False).last_hidden_state
            teacher = F.linear(hidden, head_rows).float().flatten(0, 1).log_softmax(-1)
        student_logits = student(input_ids=batch, use_cache=False).logits
    student_logp = student_logits.float().flatten(0, 1).log_softmax(-1)
    loss = F.kl_div(student_logp, teacher, log_target=True, reduction="batchmean")
    agreement = (student_logp.argmax(-1) == teacher.argmax(-1)).float().mean().item()
    return loss, agreement
