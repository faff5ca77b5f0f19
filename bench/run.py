"""`ouroboros bench`: contenders side by side on the same prompts, interleaved prompt by prompt."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from launch import config as cfg
from bench.prompts import load_prompts
from bench.contenders import Outcome, build_contenders
from bench.flags import CONTENDERS
from bench.report import write_report

from bench.pass_costs import run_pass_costs



@dataclass
class Tally:
    name: str
    num_tokens: int = 0
    seconds: float = 0.0
    num_passes: int = 0
    num_drafted: int = 0
    num_accepted: int = 0
    has_spec_metrics: bool = False
    num_draft_rounds: int | None = None
    num_predraft_hits: int = 0
    draft_wait_s: float = 0.0
    is_identical: bool = True

    def add(self, outcome: Outcome, reference: list[int]) -> None:
        self.num_tokens += len(outcome.tokens)
        self.seconds += outcome.seconds
        self.is_identical &= outcome.tokens == reference
        if outcome.num_passes is not None:
            self.has_spec_metrics = True
            self.num_passes += outcome.num_passes
            self.num_drafted += outcome.num_drafted or 0
            self.num_accepted += outcome.num_accepted or 0
        if outcome.num_draft_rounds is not None:
            self.num_draft_rounds = (self.num_draft_rounds or 0) + outcome.num_draft_rounds
            self.num_predraft_hits += outcome.num_predraft_hits
            self.draft_wait_s += outcome.draft_wait_s

    def row(self, baseline: float) -> dict:
        speed = self.num_tokens / self.seconds if self.seconds else 0.0
        return {
            "name": self.name, "tokens_per_s": speed, "speedup": speed / baseline if baseline else 0.0,
            "mean_accepted": self.num_tokens / self.num_passes if self.has_spec_metrics and self.num_passes else None,
            "acceptance_rate": (self.num_accepted / self.num_drafted if self.num_drafted else 0.0)
            if self.has_spec_metrics else None,
            "predraft_hit_rate": self.num_predraft_hits / self.num_draft_rounds if self.num_draft_rounds else None,
            "mean_draft_wait_ms": 1000 * self.draft_wait_s / self.num_draft_rounds if self.num_draft_rounds else None,
            "identical": self.is_identical,
        }


def run_bench(args: argparse.Namespace) -> int:
    cfg.resolve_model_flags(args)
    if args.pass_costs:
        return run_pass_costs(args)
    prompts = load_prompts(args.prompts, args.limit)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS and not (n.startswith("pipeline@") and len(n) > 9)]
    if unknown:
        raise ValueError(f"--contenders: unknown {unknown}; choose from {', '.join(CONTENDERS)}")
    if args.reference not in CONTENDERS:
        raise ValueError(f"--reference: unknown {args.reference!r}; choose from {', '.join(CONTENDERS)}")
    if args.reference in names:
        names.remove(args.reference)
    names.insert(0, args.reference)  # the baseline every ratio and identity is measured against
    contenders, notes = build_contenders(args, names)
    tallies = {c.name: Tally(c.name) for c in contenders}
    try:
        for contender in contenders:  # warm-up: first-touch costs stay out of the timings
            contender.run(contender.encode("def warm_up():"), 8)
        progress = tqdm(total=len(prompts) * len(contenders), desc="bench", unit="run", file=sys.stderr)
        for prompt in prompts:
            ids = contenders[0].encode(prompt)
            outcomes = []
            for contender in contenders:  # interleaved: A B C A B C ... so drift hits all alike
                outcomes.append(contender.run(ids, args.max_new_tokens))
                progress.update(1)
            for contender, outcome in zip(contenders, outcomes):
                tallies[contender.name].add(outcome, outcomes[0].tokens)
        progress.close()
    finally:
        for contender in contenders:
            contender.close()
    baseline = tallies[args.reference].num_tokens / tallies[args.reference].seconds
    results = [tallies[c.name].row(baseline) for c in contenders]
    report = {"device": _device_name(args.threads), "threads": args.threads, "prompts": len(prompts), "reference": args.reference,
              "max_new_tokens": args.max_new_tokens, "results": results}
    print_table(report, notes)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(report, args.plot)
    if args.report:
        print(f"report: {write_report(args.report, report, plot)}")
    return 0


def _device_name(threads: int) -> str:
    """The device, with the cores every contender got in total on a CPU (--threads)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {threads} threads per contender in all)"


def print_table(report: dict, notes: list[str]) -> None:
    print(f"\n{report['prompts']} prompts, {report['max_new_tokens']} new tokens, {report['device']}; speedup and "
          f"identical: against {report['reference']}")
    print(f"{'contender':20}{'tokens/s':>10}{'speedup':>9}{'tok/pass':>10}{'accept':>8}{'hits':>6}{'wait ms':>9}"
          f"{'identical':>11}")
    for r in report["results"]:
        mean, rate, hits, wait = (_cell(r.get(key), digits) for key, digits in (
            ("mean_accepted", 2), ("acceptance_rate", 2), ("predraft_hit_rate", 2), ("mean_draft_wait_ms", 1)))
        print(f"{r['name']:20}{r['tokens_per_s']:>10.2f}{r['speedup']:>8.2f}x{mean:>10}{rate:>8}{hits:>6}{wait:>9}"
              f"{str(r['identical']):>11}")
    for note in notes:
        print(f"note: {note}")


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot(report: dict, path: str) -> None:
    # matplotlib is optional: the chart is drawn only where it is installed
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report["results"]]
    speeds = [r["tokens_per_s"] for r in report["results"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(names, speeds, color=["#888" if n.startswith(("target", "hf")) else "#2a7" for n in names])
    for bar, r in zip(bars, report["results"]):
        ax.annotate(f"{r['speedup']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"{report['prompts']} prompts, {report['max_new_tokens']} new tokens, {report['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
