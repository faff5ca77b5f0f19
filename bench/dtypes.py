"""How often bfloat16 changes the target's own greedy text: our engine without drafts in float32
and in bfloat16, on the same prompts, and where the two texts first part.

    python -m bench.dtypes [--target smollm2-135m] [--prompts FILE.jsonl] [--limit 20] [--max-new-tokens 128]

This is about the dtype, not speculation: speculation reproduces each dtype's own engine exactly
(README, "What identical means")."""
from __future__ import annotations

import argparse
import sys

import torch
from tqdm import tqdm

from bench.prompts import load_prompts
from models.loading import for_engine, load_model, load_tokenizer
from launch.sequential import engine_alone
from verifier.engine import TargetEngine


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where the two texts differ (the shorter one's end counts), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dtypes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--prompts", metavar="FILE.jsonl", help="one JSON object per line with a 'prompt' string "
                        "(default: HumanEval)")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.target)
    engines = {dtype: TargetEngine(for_engine(load_model(args.target, "cpu", dtype)), max_sessions=1)
               for dtype in ("float32", "bfloat16")}
    differences = []
    for prompt in tqdm(load_prompts(args.prompts, args.limit), desc="prompts", file=sys.stderr):
        ids = tokenizer(prompt)["input_ids"]
        texts = [engine_alone(engine, ids, args.max_new_tokens) for engine in engines.values()]
        differences.append(first_difference(*texts))
    parted = sorted(d for d in differences if d is not None)
    print(f"{len(parted)} of {len(differences)} greedy texts ({args.max_new_tokens} new tokens) differ between "
          f"float32 and bfloat16; first differing token: {parted or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
