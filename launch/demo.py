"""`make demo`: the pipeline streams a HumanEval completion, then the target alone does the same."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.prompts import humaneval_prompts
from launch.serve import LocalPipeline
from protocol.client import Client


def humaneval_prompt(index: int) -> str:
    prompts = humaneval_prompts()
    if not 0 <= index < len(prompts):
        raise ValueError(f"--prompt-index must be within 0..{len(prompts) - 1}")
    return prompts[index]


def run_pipeline(args: argparse.Namespace, prompt: str) -> tuple[list[int], float, dict]:
    print(f"starting the pipeline: target {args.target}, draft {args.draft} (one process each) ...", file=sys.stderr)
    with LocalPipeline(args) as pipeline, Client(pipeline.endpoint, timeout=300, curve_keys=args.curve_keys) as client:
        client.generate("def warm_up():", max_new_tokens=4)  # first-touch costs stay out of the timing
        print("\n===== pipeline completion (streamed) =====\n" + prompt, end="", flush=True)
        start = time.perf_counter()
        stream = client.stream(prompt, max_new_tokens=args.max_new_tokens)
        for chunk in stream:
            print(chunk.text, end="", flush=True)
        elapsed = time.perf_counter() - start
    print("\n")
    return stream.completion.token_ids, elapsed, stream.completion.metrics


def run_target_alone(args: argparse.Namespace, prompt: str) -> tuple[list[int], float]:
    from launch.models import load_model, load_tokenizer
    from launch.reference import target_alone

    torch.set_num_threads(2)  # the same two cores the pipeline's two processes used
    tokenizer = load_tokenizer(args.target)
    model = load_model(args.target, args.target_device, args.dtype)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    target_alone(model, ids[:8], 4)  # first-touch costs stay out of the timing
    start = time.perf_counter()
    tokens = target_alone(model, ids, args.max_new_tokens, stops)
    return tokens, time.perf_counter() - start


def run_demo(args: argparse.Namespace) -> int:
    prompt = humaneval_prompt(args.prompt_index)
    tokens, elapsed, metrics = run_pipeline(args, prompt)
    print("running the target alone on the same prompt (2 threads) ...", file=sys.stderr)
    ref_tokens, ref_elapsed = run_target_alone(args, prompt)
    speed, ref_speed = len(tokens) / elapsed, len(ref_tokens) / ref_elapsed
    print("===== speed, same prompt, same two cores =====")
    print(f"{'':24}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    print(f"{'pipeline (2 processes)':24}{len(tokens):>8}{elapsed:>9.2f}{speed:>10.1f}")
    print(f"{'target alone':24}{len(ref_tokens):>8}{ref_elapsed:>9.2f}{ref_speed:>10.1f}")
    print(f"speedup {speed / ref_speed:.2f}x; output identical to the target alone: {tokens == ref_tokens}")
    print(f"tokens per target pass {metrics['tokens_per_round']:.2f}, acceptance rate "
          f"{metrics['acceptance_rate']:.2f}, pre-drafts used {metrics['predrafts_used']:.0f}, "
          f"branch hits {metrics['branch_hits']:.0f}")
    return 0 if tokens == ref_tokens else 1
