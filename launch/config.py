"""CLI flags -> the frozen per-role configs (the only place that reads the environment)."""
from __future__ import annotations

import argparse

from drafter.config import DrafterConfig
from verifier.config import VerifierConfig

DEFAULT_TARGET = "smollm2-135m"
DEFAULT_DRAFT = "layers:0,1"


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help="target model: built-in name, path or hub id")
    parser.add_argument(
        "--draft", default=DEFAULT_DRAFT, help="draft model: path, hub id, or layers:I,J (target's layers)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def add_algorithm_flags(parser: argparse.ArgumentParser) -> None:
    d = DrafterConfig()
    parser.add_argument("--gamma", type=int, default=d.gamma, help="draft tokens per round")
    parser.add_argument("--window", type=int, default=d.window, help="W: lookahead window columns")
    parser.add_argument("--ngram", type=int, default=d.ngram, help="N: n-gram size incl. key token")
    parser.add_argument("--pool-size", type=int, default=d.pool_size, help="G: phrases kept per key token")
    parser.add_argument("--branches", type=int, default=d.branches, help="K: phrase branches per round")
    parser.add_argument("--phrases-checked", type=int, default=d.phrases_checked,
                        help="pool phrases verified inside one draft pass")
    parser.add_argument("--max-trunk", type=int, default=d.max_trunk, help="longest trunk sent in one round")
    parser.add_argument("--no-text-phrases", action="store_true",
                        help="do not seed the phrase pool with n-grams of the prompt and output")


def drafter_config(args: argparse.Namespace) -> DrafterConfig:
    return DrafterConfig(
        gamma=args.gamma, window=args.window, ngram=args.ngram, pool_size=args.pool_size,
        branches=args.branches, phrases_checked=args.phrases_checked, max_trunk=args.max_trunk,
        seed_pool_from_text=not args.no_text_phrases,
    )


def verifier_config(args: argparse.Namespace) -> VerifierConfig:
    return VerifierConfig(
        draft_timeout_s=getattr(args, "draft_timeout", VerifierConfig.draft_timeout_s),
    )
