"""CLI flags -> the frozen per-role configs (the only place that reads the environment)."""
from __future__ import annotations

import argparse
import os

from drafter.config import DrafterConfig
from verifier.config import VerifierConfig

DEFAULT_TARGET = "smollm2-135m"
DEFAULT_DRAFT = "smollm2-135m-draft"


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help="target model: built-in name, path or hub id")
    parser.add_argument(
        "--draft", default=None, help=f"draft model: path, hub id, or layers:I,J (target's layers); "
        f"default: the built-in draft, which fits only the built-in target {DEFAULT_TARGET}"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-packed-weights", action="store_true",
                        help="keep HF's plain linear layers (by default, on a CPU, the engines' weights are "
                             "prepacked for oneDNN, which makes a many-token pass cheaper)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest request, prompt + new tokens: sizes each process's KV slots (default: the "
                             "smaller of the model's context and 4096)")


def model_argv(args: argparse.Namespace) -> list[str]:
    """The model flags again, to hand them to a child process."""
    argv = ["--target", args.target, "--draft", args.draft, "--dtype", args.dtype]
    argv += ["--no-packed-weights"] if args.no_packed_weights else []
    return argv + (["--max-len", str(args.max_len)] if args.max_len is not None else [])


def resolve_model_flags(args: argparse.Namespace, needs_draft: bool = True) -> None:
    """Check --target and --draft before anything is loaded (one line naming the flag for a
    missing path) and fill in the default draft, which exists only for the built-in target."""
    if getattr(args, "target", None) is None:
        return
    check_model_path("--target", args.target)
    if not hasattr(args, "draft"):  # train-draft, eval-draft --draft is its own, draft-data
        return
    if args.draft is None and needs_draft:
        if args.target != DEFAULT_TARGET:
            raise ValueError(f"--draft is required with --target {args.target}: the built-in draft fits only "
                             f"the built-in target {DEFAULT_TARGET} (give a draft path, or layers:0,1)")
        args.draft = DEFAULT_DRAFT
    if args.draft is not None:
        check_model_path("--draft", args.draft)


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else naming a place on disk is a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_path(flag: str, name: str) -> None:
    """A built-in name, `layers:...` (drafts), a model directory, or a hub id: fail in one line
    when a path does not exist or holds no model."""
    if name in (DEFAULT_TARGET, DEFAULT_DRAFT) or (flag == "--draft" and name.startswith("layers:")):
        return
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, f)) for f in ("config.json", "draft.json")):
            raise ValueError(f"{flag} {name}: the directory has no config.json, so it holds no Hugging Face model")
    elif os.path.exists(path):
        raise ValueError(f"{flag} {name}: is a file; give the model's directory (with config.json)")
    elif _looks_like_local_path(name):
        raise ValueError(f"{flag} {name}: no such directory")


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--curve-keys", metavar="DIR", default=None,
                        help="CURVE authentication and encryption with the keys from `ouroboros keys DIR`")


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
    parser.add_argument("--min-gamma", type=int, default=d.min_gamma, help="shortest adaptive draft")
    parser.add_argument("--fixed-gamma", action="store_true", help="always draft --gamma tokens (no adaptation)")
    parser.add_argument("--lookup-tokens", type=int, default=d.lookup_tokens,
                        help="prompt-lookup branch length (0 = no lookup branch)")
    parser.add_argument("--lookup-ngram", type=int, default=d.lookup_ngram, help="longest n-gram prompt lookup matches")
    parser.add_argument("--lookup-min-ngram", type=int, default=d.lookup_min_ngram,
                        help="shortest n-gram prompt lookup matches")
    parser.add_argument("--min-agreement", type=float, default=d.min_agreement,
                        help="send no draft trunk while the draft's running first-token agreement is below this")
    parser.add_argument("--draft-batch", type=int, default=d.max_batch,
                        help="requests drafted together in one batched draft pass")
    parser.add_argument("--no-text-phrases", action="store_true",
                        help="do not seed the phrase pool with n-grams of the prompt and output")


def drafter_config(args: argparse.Namespace) -> DrafterConfig:
    return DrafterConfig(
        gamma=args.gamma, window=args.window, ngram=args.ngram, pool_size=args.pool_size,
        branches=args.branches, phrases_checked=args.phrases_checked, max_trunk=args.max_trunk,
        seed_pool_from_text=not args.no_text_phrases, adaptive=not args.fixed_gamma, min_gamma=args.min_gamma,
        min_agreement=args.min_agreement, lookup_tokens=args.lookup_tokens, lookup_ngram=args.lookup_ngram,
        lookup_min_ngram=args.lookup_min_ngram, max_batch=args.draft_batch,
    )


def add_verifier_flags(parser: argparse.ArgumentParser) -> None:
    v = VerifierConfig()
    parser.add_argument("--draft-timeout", type=float, default=v.draft_timeout_s,
                        help="seconds to wait for a valid draft before a round is decoded by the target alone")
    parser.add_argument("--max-sessions", type=int, default=v.max_sessions, help="requests decoded at once")
    parser.add_argument("--max-batch", type=int, default=v.max_batch,
                        help="ready requests verified together in one batched target pass")
    parser.add_argument("--max-queue", type=int, default=v.max_queue,
                        help="requests waiting beyond --max-sessions; more are refused as busy")
    parser.add_argument("--max-draft-tokens", type=int, default=v.max_draft_tokens,
                        help="most trunk + branch tokens verified in one target pass")
    parser.add_argument("--own-lookup-tokens", type=int, default=v.own_lookup_tokens,
                        help="prompt-lookup branch the verifier finds itself for a round with no draft (0 = none)")
    parser.add_argument("--verify-all-drafts", action="store_true",
                        help="verify every draft token sent, even where the measured pass costs say it does not pay")


def verifier_config(args: argparse.Namespace, eos_token_id: int | None = None) -> VerifierConfig:
    return VerifierConfig(
        draft_timeout_s=args.draft_timeout, max_sessions=args.max_sessions, max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_draft_tokens=args.max_draft_tokens, is_width_fitted=not args.verify_all_drafts,
        own_lookup_tokens=args.own_lookup_tokens,
        stop_token_ids=() if eos_token_id is None else (int(eos_token_id),),
    )


def algorithm_argv(args: argparse.Namespace) -> list[str]:
    """The algorithm flags again, to hand them to a child process."""
    argv = ["--gamma", str(args.gamma), "--window", str(args.window), "--ngram", str(args.ngram),
            "--pool-size", str(args.pool_size), "--branches", str(args.branches),
            "--phrases-checked", str(args.phrases_checked), "--max-trunk", str(args.max_trunk),
            "--min-gamma", str(args.min_gamma), "--lookup-tokens", str(args.lookup_tokens),
            "--lookup-ngram", str(args.lookup_ngram), "--min-agreement", str(args.min_agreement), "--lookup-min-ngram", str(args.lookup_min_ngram),
            "--draft-batch", str(args.draft_batch)]
    argv += ["--no-text-phrases"] if args.no_text_phrases else []
    return argv + (["--fixed-gamma"] if args.fixed_gamma else [])


def verifier_argv(args: argparse.Namespace) -> list[str]:
    return ["--draft-timeout", str(args.draft_timeout), "--max-sessions", str(args.max_sessions),
            "--max-queue", str(args.max_queue), "--max-batch", str(args.max_batch),
            "--max-draft-tokens", str(args.max_draft_tokens), "--own-lookup-tokens", str(args.own_lookup_tokens)
            ] + (["--verify-all-drafts"] if args.verify_all_drafts else [])
