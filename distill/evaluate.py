"""`ouroboros eval-draft`: how well a draft predicts its target, and what that is worth.

Teacher-forced on the target's own greedy continuations of held-out prompts. The draft's greedy
run from any point equals its teacher-forced predictions for as long as they match the target
(the prefixes are the same), so the number of consecutive matches from a position is exactly
how many tokens a draft started there gets accepted. From that, without assuming independence:
acceptance per draft position, and the tokens per round for each draft length gamma."""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from bench.pass_costs import EnginePasses
from bench.prompts import load_prompts
from distill.data import target_continuations
from models.loading import for_engine, load_pair

GAMMAS = range(1, 17)


@torch.no_grad()
def match_vectors(draft: torch.nn.Module, items: list[tuple[list[int], list[int]]]) -> list[list[bool]]:
    """Per (prompt, continuation): whether the draft's argmax, given the true prefix, is the
    target's token at each continuation position."""
    device = next(draft.parameters()).device
    token_ids = getattr(draft, "draft_token_ids", None)
    vectors = []
    for prompt, continuation in items:
        if not continuation:
            continue
        ids = torch.tensor([prompt + continuation[:-1]], device=device)
        logits = draft(input_ids=ids, logits_to_keep=len(continuation)).logits[0]
        predicted = logits.argmax(dim=-1)
        if token_ids is not None:  # a reduced output vocabulary: rows map to token ids
            predicted = token_ids[predicted]
        vectors.append((predicted.cpu() == torch.tensor(continuation)).tolist())
    return vectors


def run_lengths(matches: list[bool]) -> list[int]:
    """r[t] = consecutive matches from t on: the tokens a draft started at t gets accepted."""
    runs = [0] * (len(matches) + 1)
    for t in range(len(matches) - 1, -1, -1):
        runs[t] = runs[t + 1] + 1 if matches[t] else 0
    return runs[:-1]


def summarize(vectors: list[list[bool]]) -> dict:
    """agreement a; acceptance_by_position[k] = P(draft token k+1 accepted | the k before were);
    tokens_per_round[g] = mean of min(r, g) + 1 over starts with g tokens of room (the target
    adds one token each round)."""
    matches = [m for vector in vectors for m in vector]
    starts = [(run, len(vector) - t) for vector in vectors for t, run in enumerate(run_lengths(vector))]
    by_position = []
    for k in range(max(GAMMAS)):
        reached = [run for run, room in starts if run >= k and room > k]
        by_position.append(sum(run > k for run in reached) / len(reached) if reached else 0.0)
    per_round = {}
    for gamma in GAMMAS:
        usable = [run for run, room in starts if room >= gamma] or [run for run, _ in starts]
        per_round[str(gamma)] = sum(min(run, gamma) + 1 for run in usable) / len(usable) if usable else 1.0
    return {"agreement": sum(matches) / len(matches) if matches else 0.0,
            "acceptance_by_position": by_position, "tokens_per_round": per_round,
            "prompts": len(vectors), "tokens": len(matches)}


def teacher_forced_agreement(draft: torch.nn.Module, items: list[tuple[list[int], list[int]]]) -> float:
    """Fraction of continuation tokens the draft's argmax predicts, given the true prefix."""
    return summarize(match_vectors(draft, items))["agreement"]


def draft_step_ratio(target: torch.nn.Module, draft: torch.nn.Module) -> float:
    """A 1-token draft pass over a 1-token target pass, both through our engine, on this thread count."""
    target_ms = EnginePasses(for_engine(copy.deepcopy(target))).tokens(1)
    draft_ms = EnginePasses(for_engine(copy.deepcopy(draft))).tokens(1)
    return draft_ms / target_ms


def evaluate(target: torch.nn.Module, draft: torch.nn.Module, items: list[tuple[list[int], list[int]]]) -> dict:
    report = summarize(match_vectors(draft, items))
    report["draft_step_ratio"] = draft_step_ratio(target, draft)
    return report


def format_report(report: dict) -> str:
    per_round = report["tokens_per_round"]
    return "\n".join([
        f"agreement {report['agreement']:.3f} over {report['tokens']} tokens of {report['prompts']} prompts; "
        f"draft step / target step {report['draft_step_ratio']:.3f}",
        "acceptance by draft position: " + " ".join(f"{a:.2f}" for a in report["acceptance_by_position"]),
        "tokens per round by gamma: " + ", ".join(f"{g}: {per_round[g]:.2f}" for g in per_round),
    ])


def run_eval_draft(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    torch.set_num_threads(args.threads)
    pair = load_pair(args.target, args.draft, dtype=args.dtype)
    prompts = load_prompts(args.prompts, args.limit)
    print(f"eval-draft: the target continues {len(prompts)} prompts ({args.max_new_tokens} tokens each) ...",
          file=sys.stderr, flush=True)
    items = target_continuations(pair.target, pair.tokenizer, prompts, args.max_new_tokens)
    report = evaluate(pair.target, pair.draft, items)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0
