"""The launch commands of the `ouroboros` command line: generate, serve, the process roles
(verifier, drafter, http-door) and keys. The whole command, with bench, stress, the draft
tools and demo, is ouroboros.cli; the processes launch spawns run `python -m launch.cli`."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable

from launch import config as cfg
from launch.http_door import add_http_door_parser
from launch.serve import add_serve_flags, add_serve_parser
from launch.workers import add_worker_parsers
from protocol.errors import OuroborosError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="ouroboros", description="Lossless Ouroboros speculative decoding")
    return parser, parser.add_subparsers(dest="command", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = new_parser()
    add_launch_commands(sub)
    return parser


def add_launch_commands(sub: argparse._SubParsersAction) -> None:

    gen = sub.add_parser("generate", help="complete one prompt (spawns the pipeline unless --connect)")
    gen.add_argument("prompt", help="prompt text (completed as is, no chat template)")
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--connect", metavar="ADDR", help="a running `ouroboros serve`, e.g. tcp://127.0.0.1:5555")
    mode.add_argument("--spawn", action="store_true", help="start the pipeline for this prompt (the default)")
    mode.add_argument("--in-process", action="store_true", help="both engines in this process (sequential)")
    mode.add_argument("--target-only", action="store_true", help="the target alone (the reference)")
    gen.add_argument("--max-new-tokens", type=positive_int, default=128)
    gen.add_argument("--threads", type=positive_int, default=2, help="torch threads for in-process runs")
    gen.add_argument("--timeout", type=float, default=120.0, help="seconds of server silence before giving up")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed (drawn and reported if absent)")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable); excluded from the text")
    add_serve_flags(gen)
    gen.set_defaults(port=0)

    add_serve_parser(sub)
    add_worker_parsers(sub)
    add_http_door_parser(sub)

    keys = sub.add_parser("keys", help="make CURVE keys for --curve-keys (cross-node links)")
    keys.add_argument("dir", help="directory for the server and client key pairs")
    keys.add_argument("--overwrite", action="store_true", help="replace keys already there")


# each command's entry point, imported only when it runs (module, function): a command loads
# only what it needs (the process roles start without the HTTP door's or vLLM's imports)
HANDLERS = {
    "serve": ("launch.serve", "run_serve"), "http-door": ("launch.http_door", "run_http_door"),
    "verifier": ("launch.workers", "run_verifier"), "drafter": ("launch.workers", "run_drafter"),
}


def main(argv: list[str] | None = None, parser: Callable[[], argparse.ArgumentParser] = build_parser,
         handlers: dict[str, tuple[str, str]] = HANDLERS) -> int:
    """Parse and run one command of `parser` (handlers: command -> (module, function))."""
    argv, passed = list(sys.argv[1:] if argv is None else argv), []
    if argv[:1] == ["serve"] and "--" in argv:  # what follows `--` is vLLM's own flags
        cut = argv.index("--")
        argv, passed = argv[:cut], argv[cut + 1 :]
    args = parser().parse_args(argv)
    if args.command == "serve":
        args.vllm_args = passed
    try:
        if not (args.command == "generate" and args.connect):  # a running server has its own models
            needs_draft = not getattr(args, "target_only", False) and args.command != "verifier"
            cfg.resolve_model_flags(args, needs_draft)  # one line naming the flag, before anything loads
        if args.command in ("generate", "serve", "demo", "bench", "stress"):
            cfg.drafter_config(args)  # fail fast, naming the flag, before any process starts
            cfg.verifier_config(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "keys":
            return cmd_keys(args)
        module, function = handlers[args.command]
        return getattr(importlib.import_module(module), function)(args)
    except (ValueError, RuntimeError, OSError, OuroborosError) as exc:
        print(f"ouroboros: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_keys(args: argparse.Namespace) -> int:
    # here, not at the top: the CURVE key tools load only for `keys`
    from protocol.curve import create_keys

    root = create_keys(args.dir, overwrite=args.overwrite)
    print(f"CURVE keys in {root}: the verifier needs the whole directory; clients and the drafter "
          f"need server.key, client.key and client.key_secret. Keep *.key_secret private.")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.in_process or args.target_only:
        return _generate_in_process(args)
    # here, not at the top: the parent of the processes never loads torch or a model
    from launch.serve import LocalPipeline
    from protocol.client import Client

    if args.connect:
        return _stream_completion(Client(args.connect, timeout=args.timeout, curve_keys=args.curve_keys), args)
    with LocalPipeline(args) as pipeline:
        return _stream_completion(Client(pipeline.endpoint, timeout=args.timeout, curve_keys=args.curve_keys), args)


def _stream_completion(client, args: argparse.Namespace) -> int:
    with client:
        start = time.perf_counter()
        print(args.prompt, end="", flush=True)
        stream = client.stream(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop)
        for chunk in stream:
            print(chunk.text, end="", flush=True)
        elapsed = time.perf_counter() - start
        completion = stream.completion
    print()
    extra = {"finish_reason": completion.finish_reason} | ({"seed": completion.seed} if args.temperature else {})
    _print_metrics(completion.completion_tokens, elapsed, completion.metrics | extra)
    return 0


def _generate_in_process(args: argparse.Namespace) -> int:
    # here, not at the top: torch and the models load only in the command that needs them
    import torch

    from launch.local import InProcessPipeline

    from verifier.sampling import SamplingParams

    if args.stop:
        raise ValueError("--stop needs the pipeline (drop --in-process/--target-only)")
    torch.set_num_threads(args.threads)
    seed = args.seed if args.seed is not None else int(time.time_ns() % (1 << 31))
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, seed) if args.temperature else None
    draft = None if args.target_only else args.draft
    pipeline = InProcessPipeline.load(args.target, draft, cfg.drafter_config(args), dtype=args.dtype,
                                      packed=not args.no_packed_weights)
    start = time.perf_counter()
    run = pipeline.target_only if args.target_only else pipeline.complete
    text, tokens, metrics = run(args.prompt, args.max_new_tokens, sampling)
    if sampling is not None:
        metrics = metrics | {"seed": seed}
    elapsed = time.perf_counter() - start
    print(args.prompt + text)
    _print_metrics(len(tokens), elapsed, metrics)
    return 0


def _print_metrics(num_tokens: int, elapsed: float, metrics: dict) -> None:
    print(f"\n--- {num_tokens} tokens in {elapsed:.2f} s ({num_tokens / elapsed:.1f} tokens/s)", file=sys.stderr)
    for key, value in metrics.items():
        shown = f"{value:.3f}" if isinstance(value, float) and not float(value).is_integer() else value
        print(f"    {key}: {shown}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
