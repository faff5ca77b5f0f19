"""`ouroboros train-draft`: distil a small draft from a target's own logits, resumably."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from distill.checkpoint import Progress, read_checkpoint, restore, write_checkpoint
from distill.curve import agreements, eval_sets, record_point
from distill.evaluate import evaluate, format_report
from distill.flags import SCHEDULES
from distill.data import ChunkStream, coverage, prefetched, training_files
from distill.student import choose_vocab, distill_loss, init_training, initial_draft, new_vocabulary
from models.draft import build_student, check_layers, save_draft, target_fingerprint
from models.loading import default_device, load_model, load_tokenizer

WARMUP_STEPS = 10
FINAL_LR_FRACTION = 0.1  # where the cosine schedule ends, as a share of --lr


@dataclass(frozen=True)
class TrainConfig:
    target: str
    out: Path
    layers: tuple[int, ...] = (0, 1)
    minutes: float | None = 10.0
    tokens: int | None = None
    resume: bool = False
    data: tuple[str, ...] = ()
    use_site_packages: bool = True
    lr: float = 5e-4
    seq_len: int = 256
    batch_size: int = 4
    vocab_size: int = 8192
    threads: int = 2
    checkpoint_every_minutes: float = 5.0
    eval_prompts: int = 20
    eval_files: tuple[str, ...] = ()  # more held-out sets (JSONL prompts) on the curve, e.g. chat
    eval_new_tokens: int = 64
    seed: int = 0
    device: str = "cpu"
    init: str | None = None  # a draft directory (or the built-in draft's name) to start from
    data_repeat: int = 1  # --data files weigh this many times as much as site-packages files
    schedule: str = "constant"  # or "cosine": from --lr down to a tenth over this run's budget
    revocab: bool = False  # with init: the output vocabulary chosen afresh from this run's data
    precision: str = "auto"  # the forwards' arithmetic: bf16 autocast, fp32, or auto (bf16 on CUDA only)

    @property
    def is_bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.device.startswith("cuda"))

    def __post_init__(self) -> None:
        checks = {
            "--layers needs at least one layer index": bool(self.layers),
            "--minutes must be > 0": self.minutes is None or self.minutes > 0,
            "--tokens must be > 0": self.tokens is None or self.tokens > 0,
            "pass one of --minutes or --tokens": (self.minutes is None) != (self.tokens is None),
            "--lr must be > 0": self.lr > 0,
            "--seq-len must be >= 2": self.seq_len >= 2,
            "--batch-size must be >= 1": self.batch_size >= 1,
            "--vocab-size must be >= 0 (0 = the full vocabulary)": self.vocab_size >= 0,
            "--threads must be >= 1": self.threads >= 1,
            "--checkpoint-every-minutes must be > 0": self.checkpoint_every_minutes > 0,
            "--eval-prompts must be >= 0": self.eval_prompts >= 0,
            "--eval-new-tokens must be >= 1": self.eval_new_tokens >= 1,
            "--data is required with --no-site-packages": self.use_site_packages or bool(self.data),
            "--data-repeat must be >= 1": self.data_repeat >= 1,
            f"--schedule must be one of {', '.join(SCHEDULES)}": self.schedule in SCHEDULES,
            "--revocab needs --init (a fresh run chooses its vocabulary anyway)": not self.revocab or bool(self.init),
        }
        for message, is_ok in checks.items():
            if not is_ok:
                raise ValueError(message)

    def run_identity(self) -> dict:
        """The flags a resumed run must repeat: they fix the model and the data order."""
        return {"target": self.target, "layers": list(self.layers), "vocab_size": self.vocab_size,
                "seq_len": self.seq_len, "batch_size": self.batch_size, "seed": self.seed,
                "data": list(self.data), "use_site_packages": self.use_site_packages, "init": self.init,
                "data_repeat": self.data_repeat, "revocab": self.revocab}


def train_config(args: argparse.Namespace) -> TrainConfig:
    minutes = args.minutes if args.minutes is not None or args.tokens is not None else 10.0
    return TrainConfig(
        target=args.target, out=Path(args.out), layers=tuple(args.layers), minutes=minutes, tokens=args.tokens,
        resume=args.resume, data=tuple(args.data), use_site_packages=not args.no_site_packages, lr=args.lr,
        seq_len=args.seq_len, batch_size=args.batch_size, vocab_size=args.vocab_size, threads=args.threads,
        checkpoint_every_minutes=args.checkpoint_every_minutes, eval_prompts=args.eval_prompts, seed=args.seed,
        eval_files=tuple(args.eval_file), eval_new_tokens=args.eval_new_tokens,
        device=default_device(args.device), init=args.init, data_repeat=args.data_repeat, schedule=args.schedule,
        revocab=args.revocab, precision=args.precision,
    )


def run_train_draft(args: argparse.Namespace) -> int:
    config = train_config(args)
    torch.set_num_threads(config.threads)
    torch.set_float32_matmul_precision("high")
    checkpoint = read_checkpoint(config)
    config.out.mkdir(parents=True, exist_ok=True)
    target = load_model(config.target, config.device).requires_grad_(False)
    check_layers(target, list(config.layers))
    tokenizer = load_tokenizer(config.target)
    files = training_files(list(config.data), config.use_site_packages, config.data_repeat)
    print(f"training data: {len(files)} files")
    sets = eval_sets(config, target, tokenizer)
    items = sets.get("humaneval", [])
    progress = Progress()
    if checkpoint is not None:
        student = build_student(target, list(config.layers), checkpoint["student"].get("draft_token_ids"))
    elif config.init is not None:
        student = initial_draft(config, target)
        if config.revocab:
            student = new_vocabulary(config, target, student, tokenizer, files, progress)
    else:
        vocab_ids = choose_vocab(config, tokenizer, files, target.config.vocab_size, progress)
        student = build_student(target, list(config.layers), vocab_ids)
    vocab_ids = getattr(student, "draft_token_ids", None)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr,
                                  betas=(0.9, 0.95), weight_decay=0.0)
    if checkpoint is None:
        progress.agreement_start = agreements(student, sets).get("humaneval")
    else:
        progress = restore(checkpoint, student, optimizer)
    if vocab_ids is not None:
        print(f"reduced vocabulary: {len(vocab_ids)} tokens cover {progress.vocab_coverage:.1%} of the training "
              f"sample and {coverage(vocab_ids, [t for _, c in items for t in c]):.1%} of the eval continuations")
    stream = ChunkStream(files, tokenizer, config.seq_len, config.batch_size, config.seed, progress.cursor)
    if checkpoint is None and sets:
        record_point(config.out, progress.tokens_seen, progress.minutes, student, sets)
    tokens_per_s = train_loop(config, target, student, optimizer, stream, progress, sets)
    return report(config, target, student, sets, progress, tokens_per_s)


def learning_rate(config: TrainConfig, step: int, fraction_done: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then --lr (constant: runs are open-ended), or with
    --schedule cosine, half a cosine from --lr to FINAL_LR_FRACTION of it at the budget's end."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    if config.schedule == "constant":
        return config.lr * warmup
    decay = 0.5 * (1.0 + math.cos(math.pi * min(max(fraction_done, 0.0), 1.0)))
    return config.lr * warmup * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * decay)


def train_step(config: TrainConfig, target, head_rows: torch.Tensor, student, optimizer, batch: torch.Tensor,
               step: int, fraction_done: float = 0.0) -> tuple[float, float]:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step, fraction_done)
    loss, agreement = distill_loss(target, head_rows, student, batch.to(config.device), config.is_bf16)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    return loss.item(), agreement


def train_loop(config: TrainConfig, target, student, optimizer, stream: ChunkStream, progress: Progress,
               sets: dict | None = None) -> float:
    """Train until this run's budget (minutes or tokens) is spent, a checkpoint and a point of
    the curve (distill.curve) every few minutes; returns training tokens/s."""
    head = target.get_output_embeddings().weight.detach()
    token_ids = getattr(student, "draft_token_ids", None)
    head_rows = head if token_ids is None else head[token_ids]
    total = config.tokens if config.tokens else config.minutes * 60
    bar = tqdm(total=total, unit="tok" if config.tokens else "s", desc="train-draft", file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}{unit} [{elapsed}<{remaining}{postfix}]")
    start = last_save = time.perf_counter()
    num_tokens, loss_avg, agree_avg = 0, None, None
    student.train()
    for batch, cursor in prefetched(stream):
        fraction_done = num_tokens / config.tokens if config.tokens else (time.perf_counter() - start) / total
        loss, agreement = train_step(config, target, head_rows, student, optimizer, batch, progress.step,
                                     fraction_done)
        now = time.perf_counter()
        progress.step += 1
        progress.tokens_seen += batch.numel()
        progress.cursor = cursor
        num_tokens += batch.numel()
        loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
        agree_avg = agreement if agree_avg is None else 0.9 * agree_avg + 0.1 * agreement
        bar.update(batch.numel() if config.tokens else min(now - start, total) - bar.n)
        bar.set_postfix(loss=f"{loss_avg:.3f}", agree=f"{agree_avg:.3f}", tok_s=f"{num_tokens / (now - start):.0f}")
        if now - last_save >= config.checkpoint_every_minutes * 60:
            write_checkpoint(config, student, optimizer, progress, (now - start) / 60)
            if sets:
                record_point(config.out, progress.tokens_seen, progress.minutes + (now - start) / 60, student, sets)
            last_save = time.perf_counter()
        if (num_tokens >= config.tokens) if config.tokens else (now - start >= config.minutes * 60):
            break
    bar.close()
    student.eval()
    elapsed = time.perf_counter() - start
    progress.minutes += elapsed / 60
    write_checkpoint(config, student, optimizer, progress, 0.0)
    return num_tokens / max(elapsed, 1e-9)


def report(config: TrainConfig, target, student, sets: dict, progress: Progress, tokens_per_s: float) -> int:
    """Saves the draft with its training record: the HumanEval evaluation (what `ouroboros
    eval-draft` reports) and the agreement on every held-out set (the curve's last point)."""
    items = sets.get("humaneval", [])
    evaluation = evaluate(target, student.eval(), items) if items else None
    by_set = record_point(config.out, progress.tokens_seen, progress.minutes, student, sets) if sets else {}
    meta = {
        "steps": progress.step, "tokens": progress.tokens_seen, "minutes": round(progress.minutes, 2),
        "tokens_per_s_last_run": round(tokens_per_s, 1), "device": config.device, "threads": config.threads,
        "lr": config.lr, "schedule": config.schedule, "precision": "bf16" if config.is_bf16 else "fp32",
        "seq_len": config.seq_len, "batch_size": config.batch_size,
        "seed": config.seed, "vocab_coverage_train_sample": round(progress.vocab_coverage, 4),
        "eval_prompts": len(items), "agreement_start": progress.agreement_start,
        "agreement": evaluation["agreement"] if evaluation else None,
        "agreement_by_set": {k: v for k, v in by_set.items() if k not in ("tokens", "minutes")},
        "evaluation": evaluation,  # distill.evaluate: what `ouroboros eval-draft` reports
        "init": config.init, "revocab": config.revocab, "init_training": init_training(config),
    }
    save_draft(student, config.out, config.target, list(config.layers), meta, fingerprint=target_fingerprint(target))
    print(json.dumps(meta, indent=2))
    if evaluation:
        print(f"untrained agreement {progress.agreement_start or 0:.3f}; on {len(items)} held-out HumanEval prompts:")
        print(format_report(evaluation))
    print(f"draft written to {config.out}")
    return 0
