"""The `ouroboros` command line."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from launch import config as cfg


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ouroboros", description="Lossless Ouroboros speculative decoding")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="complete one prompt")
    gen.add_argument("prompt", help="prompt text (completed as is, no chat template)")
    gen.add_argument("--in-process", action="store_true", help="run both engines in this process (sequential)")
    gen.add_argument("--target-only", action="store_true", help="decode with the target alone (the reference)")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=128)
    gen.add_argument("--threads", type=_positive_int, default=2, help="torch threads for in-process runs")
    cfg.add_model_flags(gen)
    cfg.add_algorithm_flags(gen)

    demo = sub.add_parser("demo", help="the built-in pair on a HumanEval prompt, beside the target alone")
    demo.add_argument("--max-new-tokens", type=_positive_int, default=96)
    cfg.add_model_flags(demo)
    cfg.add_algorithm_flags(demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "demo":
            from launch.demo import run_demo

            return run_demo(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"ouroboros: error: {exc}", file=sys.stderr)
        return 2
    return 1


def cmd_generate(args: argparse.Namespace) -> int:
    from launch.local import InProcessPipeline

    torch.set_num_threads(args.threads)
    drafter_config = cfg.drafter_config(args)
    pipeline = InProcessPipeline.load(args.target, args.draft, drafter_config, dtype=args.dtype)
    start = time.perf_counter()
    if args.target_only:
        text, tokens, metrics = pipeline.target_only(args.prompt, args.max_new_tokens)
    else:
        text, tokens, metrics = pipeline.complete(args.prompt, args.max_new_tokens)
    elapsed = time.perf_counter() - start
    print(args.prompt + text)
    print(f"\n--- {len(tokens)} tokens in {elapsed:.2f} s ({len(tokens) / elapsed:.1f} tokens/s)", file=sys.stderr)
    for key, value in metrics.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"    {key}: {shown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
