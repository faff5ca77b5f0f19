"""CLI flags -> the frozen per-role configs, and the launch commands' environment.

The environment variables the launch commands read are read here (the functions at the end):
OUROBOROS_LOG_LEVEL, OUROBOROS_VLLM_PYTHON, OUROBOROS_DRAFTER_HOST and torchrun's RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Below launch, three places read
their own, since they cannot import it: the model cache (XDG_CACHE_HOME, models.loading), the CPU
kernels' build (OUROBOROS_KERNEL_DIR, CXX, kvcache.cpu_gemm) and the vLLM door, which vLLM builds
in its own process and which takes its link from the variables `serve --verifier vllm` sets
(verifier.vllm_door)."""
from __future__ import annotations

import argparse
import dataclasses
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
                             "prepacked for our CPU GEMM (AVX-512 or AVX2), float32 or bfloat16, else oneDNN, which makes a "
                             "many-token pass cheaper; in bfloat16 the plain layers are not batch-invariant, so "
                             "speculation may then change the text at near-ties)")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="on CUDA, run both engines' passes eagerly (by default the target's verification "
                             "passes and the draft's passes replay CUDA graphs captured at bucketed shapes, the common ones "
                             "at start-up, the rest on first use)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest request, prompt + new tokens: sizes each process's KV slots (default: the "
                             "smaller of the model's context and 4096)")


def model_argv(args: argparse.Namespace) -> list[str]:
    """The model flags again, to hand them to a child process."""
    argv = ["--target", args.target, "--draft", args.draft, "--dtype", args.dtype]
    argv += ["--no-packed-weights"] if args.no_packed_weights else []
    argv += ["--no-cuda-graphs"] if getattr(args, "no_cuda_graphs", False) else []
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


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _knobs(config_type: type):
    return [f for f in dataclasses.fields(config_type) if "flag" in f.metadata]


def add_config_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """The flags of a frozen config's knobs (protocol.knobs), with its defaults."""
    defaults = config_type()
    for f in _knobs(config_type):
        flag, help_text = f.metadata["flag"], f.metadata["help"]
        if f.metadata["inverted_by"]:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            default = getattr(defaults, f.name)
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def config_from_args(config_type: type, args: argparse.Namespace, **extra):
    """The frozen config from parsed flags (each error names its flag)."""
    values = {}
    for f in _knobs(config_type):
        value = getattr(args, _dest(f.metadata["flag"]))
        values[f.name] = not value if f.metadata["inverted_by"] else value
    return config_type(**values, **extra)


def config_argv(config) -> list[str]:
    """A config's knobs as flags again, for a child process that parses them back."""
    argv = []
    for f in _knobs(type(config)):
        value = getattr(config, f.name)
        if f.metadata["inverted_by"]:
            argv += [f.metadata["flag"]] if not value else []
        else:
            argv += [f.metadata["flag"], str(value)]
    return argv


def add_algorithm_flags(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, DrafterConfig)


def drafter_config(args: argparse.Namespace) -> DrafterConfig:
    return config_from_args(DrafterConfig, args)


def add_verifier_flags(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, VerifierConfig)


def verifier_config(args: argparse.Namespace, eos_token_id: int | None = None) -> VerifierConfig:
    stops = () if eos_token_id is None else (int(eos_token_id),)
    return config_from_args(VerifierConfig, args, stop_token_ids=stops)


def algorithm_argv(args: argparse.Namespace) -> list[str]:
    """The algorithm flags again, to hand them to a child process."""
    return config_argv(drafter_config(args))


def verifier_argv(args: argparse.Namespace) -> list[str]:
    return config_argv(verifier_config(args))


def log_level() -> str:
    """$OUROBOROS_LOG_LEVEL (INFO by default; DEBUG logs every pass and its time)."""
    return os.environ.get("OUROBOROS_LOG_LEVEL", "INFO").upper()


def vllm_python_env() -> str | None:
    """$OUROBOROS_VLLM_PYTHON: the interpreter of the venv vLLM is installed in."""
    return os.environ.get("OUROBOROS_VLLM_PYTHON")


@dataclasses.dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun tells each of its processes, and OUROBOROS_DRAFTER_HOST (the address other
    nodes reach the drafter link at, where the ranks are on different nodes)."""
    rank: int
    world: int
    local_rank: int
    local_world: int
    master_addr: str
    master_port: int
    drafter_host: str | None


def torchrun_env() -> TorchrunEnv:
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return TorchrunEnv(rank, world, int(os.environ.get("LOCAL_RANK", rank)),
                           int(os.environ.get("LOCAL_WORLD_SIZE", world)), os.environ["MASTER_ADDR"],
                           int(os.environ["MASTER_PORT"]), os.environ.get("OUROBOROS_DRAFTER_HOST") or None)
    except KeyError as exc:
        raise SystemExit(f"launch.torchrun runs under torchrun, which sets {exc.args[0]}: torchrun --nproc-per-node 2 "
                         "-m launch.torchrun ...") from None
