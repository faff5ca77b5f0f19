"""Pass costs of a model *shape* with random weights: what a pass of that size costs on a device,
with no checkpoint to load (a pass's cost does not depend on its weights' values).

    python -m bench.shape_costs --shape qwen3-1.7b --device cuda --dtype bfloat16 --json costs.json

Prints the same table as `ouroboros bench --pass-costs` (target only): via our engine, via its
CUDA graphs (on CUDA), via HF's plain forward."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from bench.pass_costs import CONTEXT, REPEATS, format_table, measure

# the built-in target's shape, and a common 1.7B one (its vocabulary and widths)
SHAPES = {
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                   tie_word_embeddings=True)),
    "qwen3-1.7b": ("qwen3", dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                 max_position_embeddings=40960, tie_word_embeddings=True)),
}


def random_model(shape: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    # here, not at the top: transformers' model classes load only when a shape is built
    from transformers import AutoConfig, AutoModelForCausalLM

    family, fields = SHAPES[shape]
    config = AutoConfig.for_model(family, **fields)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialised where it runs: no host copy of the weights
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (on a CPU)")
    parser.add_argument("--json", help="write the passes here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_model(args.shape, args.device, getattr(torch, args.dtype))
    passes = measure({args.shape: model}, packed=True,
                     progress=lambda text: print(f"shape costs: {text}", file=sys.stderr, flush=True))
    device = str(next(model.parameters()).device)
    print(f"pass costs of {args.shape} ({args.dtype}, random weights) on {device}, {CONTEXT}-token context, "
          f"median of {REPEATS}:")
    print(format_table(passes))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device, "shape": args.shape, "dtype": args.dtype, "threads": args.threads,
                       "context": CONTEXT, "passes": passes}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
