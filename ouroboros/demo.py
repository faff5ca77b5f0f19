"""`make demo`: the pipeline on four fixed prompts (the first two HumanEval prompts, the first two
chat requests of bench/prompts/chat.jsonl through the target's chat template), each beside the
target alone on the same two cores, with a table, a total line and a bar chart."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.prompts import CHAT, humaneval_prompts
from launch.serve import LocalPipeline
from protocol.client import Client

def demo_prompts(tokenizer) -> list[tuple[str, str]]:
    """(label, prompt text): fixed by rule, not chosen for how they come out."""
    code = [(f"HumanEval {i}", prompt) for i, prompt in enumerate(humaneval_prompts(2))]
    requests = [json.loads(line)["request"] for line in CHAT.read_text().splitlines()[:2]]
    chat = [(f"chat: {r[:28]}...", tokenizer.apply_chat_template([{"role": "user", "content": r}], tokenize=False,
                                                                    add_generation_prompt=True)) for r in requests]
    return code + chat


def load_target(args: argparse.Namespace):
    # here, not at the top: torch and the models load only in the command that needs them
    from models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.target)
    return tokenizer, load_model(args.target, args.target_device, args.dtype)


def run_target_alone(model, tokenizer, prompt: str, max_new_tokens: int, threads: int) -> tuple[list[int], float]:
    from launch.reference import target_alone

    torch.set_num_threads(threads)  # the cores the pipeline's two processes hold together
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    start = time.perf_counter()
    tokens = target_alone(model, ids, max_new_tokens, stops)
    return tokens, time.perf_counter() - start


def run_pipeline(client: Client, prompt: str, max_new_tokens: int, is_shown: bool) -> tuple[list[int], float, dict]:
    start = time.perf_counter()
    stream = client.stream(prompt, max_new_tokens=max_new_tokens)
    for chunk in stream:
        if is_shown:
            print(chunk.text, end="", flush=True)
    return stream.completion.token_ids, time.perf_counter() - start, stream.completion.metrics


def run_demo(args: argparse.Namespace) -> int:
    print(f"loading the target ({args.target}) here, then the pipeline's two processes ...", file=sys.stderr, flush=True)
    tokenizer, model = load_target(args)
    threads = args.threads_per_process * 2
    rows = []
    with LocalPipeline(args) as pipeline, Client(pipeline.endpoint, timeout=300, curve_keys=args.curve_keys) as client:
        client.generate("def warm_up():", max_new_tokens=4)  # first-touch costs stay out of the timing
        run_target_alone(model, tokenizer, "def warm_up():", 4, threads)
        for n, (label, prompt) in enumerate(demo_prompts(tokenizer)):
            if n == 0:
                print(f"===== {label}: the pipeline's completion, streamed =====\n{prompt}", end="", flush=True)
            else:
                print(f"running {label} ...", file=sys.stderr, flush=True)
            tokens, seconds, metrics = run_pipeline(client, prompt, args.max_new_tokens, n == 0)
            if n == 0:
                print("\n")
            ref_tokens, ref_seconds = run_target_alone(model, tokenizer, prompt, args.max_new_tokens, threads)
            rows.append((label, len(tokens), seconds, len(ref_tokens), ref_seconds, metrics["tokens_per_round"],
                         tokens == ref_tokens))
    print_table(rows, threads)
    chart(rows, Path(args.chart))
    print(f"bar chart: {Path(args.chart).resolve()}")
    return 0 if all(row[-1] for row in rows) else 1


def print_table(rows: list[tuple], threads: int) -> None:
    print(f"===== tokens/s, each prompt, the same {threads} cores (pipeline: two processes) =====")
    print(f"{'prompt':36}{'pipeline':>10}{'target':>9}{'speedup':>9}{'tok/pass':>10}  identical")
    for label, n, seconds, ref_n, ref_seconds, per_pass, is_same in rows:
        print(f"{label:36}{n / seconds:>10.1f}{ref_n / ref_seconds:>9.1f}{(n / seconds) / (ref_n / ref_seconds):>8.2f}x"
              f"{per_pass:>10.2f}  {is_same}")
    speed = sum(r[1] for r in rows) / sum(r[2] for r in rows)
    ref_speed = sum(r[3] for r in rows) / sum(r[4] for r in rows)
    print(f"{'total':36}{speed:>10.1f}{ref_speed:>9.1f}{speed / ref_speed:>8.2f}x{'':>10}  "
          f"{all(r[-1] for r in rows)}")


def chart(rows: list[tuple], path: Path) -> None:
    # matplotlib is optional: the chart is drawn only where it is installed
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row[0] for row in rows]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[3] / r[4] for r in rows], width=0.4, label="target alone")
    ax.bar([x + 0.2 for x in xs], [r[1] / r[2] for r in rows], width=0.4, label="pipeline")
    ax.set_xticks(list(xs), labels, rotation=15, fontsize=8)
    ax.set_ylabel("tokens/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
