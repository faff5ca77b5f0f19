"""The draft tools' command lines (train-draft, eval-draft, draft-data), without torch: `ouroboros
--help` and every other command parse their flags without loading the models' libraries."""
from __future__ import annotations

import argparse

from launch import config as cfg

SCHEDULES = ("constant", "cosine")
KINDS = ("code", "prose", "chat")
DEFAULT_KINDS = {"code": 0.5, "prose": 0.25, "chat": 0.25}


def parse_kinds(text: str) -> dict[str, float]:
    """--kinds code=0.5,prose=0.25,chat=0.25: the share of prompts of each kind."""
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in KINDS:
            raise argparse.ArgumentTypeError(f"--kinds: unknown kind {name.strip()!r} (kinds: {', '.join(KINDS)})")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--kinds: {part!r} needs a number, as in chat=0.5") from None
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise argparse.ArgumentTypeError(f"--kinds {text}: weights must be >= 0 with a positive sum")
    return weights


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,1, got {text!r}") from None


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def add_train_draft_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train-draft", help="distil a small draft model from a target")
    p.add_argument("--target", default=cfg.DEFAULT_TARGET, help="target model: built-in name, path or hub id")
    p.add_argument("--out", required=True, help="output directory: draft, checkpoint, eval cache")
    p.add_argument("--layers", type=_layers, default=(0, 1), help="target layers the draft starts from, e.g. 0,1")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_positive(float), help="training minutes in this run (default 10)")
    budget.add_argument("--tokens", type=_positive(int), help="training tokens in this run")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--data", nargs="+", default=[], metavar="PATH", help="extra text files or directories")
    p.add_argument("--no-site-packages", action="store_true", help="train on --data only")
    p.add_argument("--data-repeat", type=int, default=1, help="weigh --data files this many times (e.g. the "
                   "target's own continuations from `ouroboros draft-data`)")
    p.add_argument("--init", default=None, metavar="DRAFT", help="start from this draft (a directory, or "
                   "smollm2-135m-draft): its layers and vocabulary; --layers and --vocab-size must match")
    p.add_argument("--revocab", action="store_true", help="with --init: choose the output vocabulary afresh "
                   "from this run's data (rows the draft had keep their weights, new rows start from the target's)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="the forwards' arithmetic: bf16 autocast (about 2x on a CPU with AVX512-BF16 or AMX), "
                        "fp32, or auto: bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--schedule", default="constant", choices=SCHEDULES,
                   help="learning rate after warm-up: constant, or cosine down to a tenth over this run's budget")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=8192, help="draft output vocabulary (0 = full)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--checkpoint-every-minutes", type=float, default=5.0)
    p.add_argument("--eval-prompts", type=int, default=20, help="held-out prompts per set for the report and curve")
    p.add_argument("--eval-file", action="append", default=[], metavar="PROMPTS.jsonl",
                   help="another held-out set (e.g. bench/prompts/chat.jsonl), on the curve beside HumanEval")
    p.add_argument("--eval-new-tokens", type=int, default=64, help="target tokens per held-out prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="where both models run (default: cuda where one is, else cpu)")
    return p


def add_eval_draft_parser(sub) -> None:
    ev = sub.add_parser("eval-draft", help="a draft's agreement with its target on the target's own continuations")
    ev.add_argument("--prompts", metavar="FILE.jsonl",
                    help="one JSON object per line with a 'prompt' (default: HumanEval)")
    ev.add_argument("--limit", type=int, default=20, help="prompts to use")
    ev.add_argument("--max-new-tokens", type=int, default=128, help="target continuation length per prompt")
    ev.add_argument("--threads", type=int, default=1, help="torch threads (the step ratio is measured on these)")
    ev.add_argument("--json", metavar="OUT.json", help="write the report as JSON")
    cfg.add_model_flags(ev)


def add_draft_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("draft-data", help="write the target's own continuations as draft training text")
    p.add_argument("--target", default=cfg.DEFAULT_TARGET)
    p.add_argument("--out", required=True, help="directory for the sample files (appended to)")
    p.add_argument("--minutes", type=float, default=30.0, help="stop after this long (default 30)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-prompt-chars", type=int, default=1200)
    p.add_argument("--sampled-fraction", type=float, default=0.5, help="share of batches sampled at --temperature")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--data", nargs="+", default=[], metavar="PATH", help="more prompt sources (files or dirs)")
    p.add_argument("--kinds", type=parse_kinds, default=DEFAULT_KINDS, metavar="KIND=W,...",
                   help="share of each prompt kind: code (a source cut at a def), prose (docs cut at a "
                        "paragraph), chat (requests of seven kinds in the chat template); "
                        "default code=0.5,prose=0.25,chat=0.25")
    p.add_argument("--samples", type=int, default=None,
                   help="stop after writing this many samples (with --minutes, whichever comes first)")
    p.add_argument("--device", default=None,
                   help="where the target generates (default: cuda where one is, else cpu; a GPU writes thousands "
                        "of tokens/s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="the target's weights while generating (float32 gives the target's own text)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p
