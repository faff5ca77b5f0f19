"""train-draft's held-out sets and learning curve: the draft's agreement on each set (HumanEval,
and any --eval-file such as bench/prompts/chat.jsonl) at every checkpoint, one JSON line each in
OUT/curve.jsonl, so a run shows agreement against training tokens on every kind of text."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bench.prompts import humaneval_prompts, load_prompts
from distill.data import eval_continuations
from distill.evaluate import teacher_forced_agreement

CURVE_FILE = "curve.jsonl"
Items = list[tuple[list[int], list[int]]]


def eval_sets(config, target, tokenizer) -> dict[str, Items]:
    """{"humaneval": the first --eval-prompts HumanEval prompts, <file stem>: each --eval-file's},
    as (prompt ids, the target's greedy continuation), cached in OUT for resumed runs."""
    if config.eval_prompts == 0:
        return {}
    sets = {"humaneval": eval_continuations(target, tokenizer, config.target, humaneval_prompts(config.eval_prompts),
                                            config.out / "eval_continuations.json", config.eval_new_tokens)}
    for file in config.eval_files:
        name = Path(file).stem
        if name in sets:
            raise ValueError(f"--eval-file {file}: a second set named {name!r}")
        prompts = load_prompts(file, config.eval_prompts)
        sets[name] = eval_continuations(target, tokenizer, config.target, prompts, config.out / f"eval_{name}.json",
                                        config.eval_new_tokens)
    return sets


@torch.no_grad()
def agreements(student: torch.nn.Module, sets: dict[str, Items]) -> dict[str, float]:
    was_training = student.training
    student.eval()
    result = {name: round(teacher_forced_agreement(student, items), 4) for name, items in sets.items()}
    student.train(was_training)
    return result


def record_point(out: Path, tokens: int, minutes: float, student: torch.nn.Module, sets: dict[str, Items]) -> dict:
    """Appends {"tokens", "minutes", <set>: agreement ...} to OUT/curve.jsonl and prints it."""
    point = {"tokens": tokens, "minutes": round(minutes, 2), **agreements(student, sets)}
    with open(out / CURVE_FILE, "a") as fh:
        fh.write(json.dumps(point) + "\n")
    print("curve: " + " ".join(f"{k} {v}" for k, v in point.items()), file=sys.stderr, flush=True)
    return point
