"""`ouroboros serve --verifier vllm`: vLLM's OpenAI server verifies with our proposer
(verifier.vllm_door) and our drafter process drafts; this process starts both, prints one ready
line, restarts a drafter that dies, and stops both on Ctrl-C."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from launch import config as cfg
from launch.door_metrics import DrafterMetrics
from launch.workers import REFUSED_EXIT_CODE
from protocol.curve import check_keys
from protocol.sockets import warn_if_public
from verifier.vllm_proposer import CURVE_ENV, ENDPOINT_ENV, FINGERPRINT_ENV, LOOKUP_ENV, TIMEOUT_ENV

VLLM_VERSION = "0.32.0"  # the vLLM CPU build the door is tested against (make install-vllm)
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
PROPOSER = "verifier.vllm_proposer.OuroborosProposer"


def vllm_python(args: argparse.Namespace) -> str:
    """--vllm-python, else $OUROBOROS_VLLM_PYTHON, else the venv `make install-vllm` makes."""
    python = args.vllm_python or cfg.vllm_python_env() or str(DEFAULT_VLLM_PYTHON)
    if not os.access(python, os.X_OK):
        raise ValueError(f"--vllm-python {python}: no such interpreter (run `make install-vllm`, which sets up vLLM "
                         f"{VLLM_VERSION} in {DEFAULT_VLLM_PYTHON.parent.parent})")
    return python


def vllm_command(args: argparse.Namespace, python: str, model_dir: str) -> list[str]:
    spec = {"method": "custom_class", "model": PROPOSER, "num_speculative_tokens": args.gamma}
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name",
            args.target, "--host", args.http_host, "--port", str(args.http), "--dtype", args.dtype,
            *(["--max-model-len", str(args.max_len)] if args.max_len else []),
            "--speculative-config", json.dumps(spec), *args.vllm_args]


def vllm_env(args: argparse.Namespace, drafter_endpoint: str, fingerprint: str, workers: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    config = cfg.verifier_config(args)
    env.update({ENDPOINT_ENV: drafter_endpoint, FINGERPRINT_ENV: fingerprint, TIMEOUT_ENV: str(config.draft_timeout_s),
                LOOKUP_ENV: str(config.own_lookup_tokens), CURVE_ENV: args.curve_keys or "",
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)})
    return cpu_env(env, workers) if args.target_device == "cpu" else env


def cpu_env(env: dict[str, str], workers: int = 1) -> dict[str, str]:
    """For vLLM's CPU build, unless set: its workers' threads over every core (vLLM wants one core
    list per worker, `|` between them), none held back, a 2 GiB KV cache each."""
    env = dict(env)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", core_lists(os.cpu_count() or 1, workers))
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return env


def core_lists(cores: int, workers: int) -> str:
    """Contiguous equal shares of the cores, one per worker; with fewer cores than workers, worker
    i on core i mod cores (they share)."""
    if workers <= cores:
        share = cores // workers
        return "|".join(f"{i * share}-{(i + 1) * share - 1}" for i in range(workers))
    return "|".join(str(i % cores) for i in range(workers))


PARALLEL_FLAGS = {"tensor": ("--tensor-parallel-size", "-tp"), "pipeline": ("--pipeline-parallel-size", "-pp"),
                  "data": ("--data-parallel-size", "-dp")}


def parallel_sizes(vllm_args: list[str]) -> dict[str, int]:
    """vLLM's --tensor/--pipeline/--data-parallel-size among the flags after `--` (1 where absent)."""
    sizes = dict.fromkeys(PARALLEL_FLAGS, 1)
    for i, arg in enumerate(vllm_args):
        flag, _, value = arg.partition("=")
        for kind, names in PARALLEL_FLAGS.items():
            if flag in names:
                value = value if _ else (vllm_args[i + 1] if i + 1 < len(vllm_args) else "")
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"{flag} {value!r} (after --): give a positive whole number")
                sizes[kind] = int(value)
    if sizes["pipeline"] > 1:
        raise ValueError(f"--pipeline-parallel-size {sizes['pipeline']}: vLLM {VLLM_VERSION} fails at start with a "
                         "custom proposer and pipeline parallelism (its first stages build no proposer); use "
                         "--tensor-parallel-size")
    if sizes["data"] > 1:
        raise ValueError(f"--data-parallel-size {sizes['data']}: our drafter serves one vLLM engine; run one "
                         "`serve --verifier vllm` per engine, each with its own --drafter-bind")
    return sizes


def shared_gpu(draft_device: str, workers: int) -> str | None:
    """vLLM's workers take the first `workers` visible GPUs: a drafter on one of them shares it."""
    kind, _, index = draft_device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit() or int(index or 0) >= workers:
        return None
    return (f"--draft-device {draft_device} is one of vLLM's GPUs (cuda:0..cuda:{workers - 1} with "
            f"--tensor-parallel-size {workers}): the drafter shares it; give it cuda:{workers} for its own")


def drafter_endpoints(args: argparse.Namespace) -> tuple[str, str]:
    """(where the door binds, where this machine connects to it): --drafter-bind, else a free
    loopback port. A tcp port already taken fails here, in one line, before vLLM loads."""
    if args.drafter_bind is None:
        if args.remote_drafter:
            raise ValueError("--remote-drafter: give --drafter-bind tcp://HOST:PORT, the endpoint the drafter "
                             "elsewhere connects to")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        return endpoint, endpoint
    endpoint = args.drafter_bind
    if not endpoint.startswith("tcp://"):
        return endpoint, endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"--drafter-bind {endpoint}: give tcp://HOST:PORT with a port from 1 to 65535")
    bare = host.strip("[]")
    try:
        with socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET) as probe:
            probe.bind(("" if bare in ("*", "0.0.0.0") else bare, int(port)))
    except OSError as exc:
        raise ValueError(f"--drafter-bind {endpoint}: cannot bind there: {exc.strerror or exc}") from exc
    warn_if_public(bare, is_authenticated=args.curve_keys is not None)
    local = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(bare)
    return endpoint, f"tcp://{local}:{port}" if local else endpoint


def drafter_command(args: argparse.Namespace, endpoint: str) -> list[str]:
    """As `serve` starts its drafter: where it shares the CPU with vLLM, it drafts only while vLLM
    waits in `propose` (--pre-drafts auto = off there), never beside vLLM's step."""
    # here, not at the top: launch.serve imports this module for --verifier vllm (a cycle at import time)
    from launch.serve import takes_turns

    shares_cpu = args.target_device == "cpu" and args.draft_device == "cpu"
    args.pre_drafts = "off" if takes_turns(args, shares_cpu) else "on"
    threads = args.drafter_threads or args.threads_per_process
    return [sys.executable, "-m", "launch.cli", "drafter", "--connect", endpoint, "--device", args.draft_device,
            "--threads", str(threads), "--max-sessions", str(args.max_sessions), *cfg.model_argv(args),
            *cfg.algorithm_argv(args), *(["--curve-keys", args.curve_keys] if args.curve_keys else []),
            *(["--pool-file", args.pool_file] if args.pool_file else [])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def run_vllm_serve(args: argparse.Namespace) -> int:
    # here, not at the top: torch and the models load only in the command that needs them
    from models.loading import load_tokenizer, resolve_path, tokenizer_fingerprint

    if args.http is None:
        raise ValueError("--verifier vllm serves vLLM's OpenAI API: give --http PORT")
    if args.gamma < 1:
        raise ValueError(f"--gamma must be >= 1 with --verifier vllm, got {args.gamma}")
    workers = parallel_sizes(args.vllm_args)["tensor"]
    if not args.remote_drafter and (warning := shared_gpu(args.draft_device, workers)):
        print(f"ouroboros: warning: {warning}", file=sys.stderr, flush=True)
    python = vllm_python(args)
    if args.curve_keys is not None:
        check_keys(args.curve_keys, as_client=not args.remote_drafter or args.drafter_metrics is not None)
    bind_endpoint, drafter_endpoint = drafter_endpoints(args)
    model_dir = resolve_path(args.target)
    fingerprint = tokenizer_fingerprint(load_tokenizer(args.target))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics = start_metrics(args, drafter_endpoint)
    vllm = subprocess.Popen(vllm_command(args, python, model_dir),
                            env=vllm_env(args, bind_endpoint, fingerprint, workers))
    drafter = None if args.remote_drafter else subprocess.Popen(drafter_command(args, drafter_endpoint))
    restarts, is_ready = 0, False
    health = f"http://{args.http_host}:{args.http}/health"
    deadline = time.monotonic() + args.ready_timeout
    try:
        while not stop.is_set():
            if vllm.poll() is not None:
                print(f"ouroboros: vLLM exited with code {vllm.returncode}; stopping", file=sys.stderr, flush=True)
                return vllm.returncode or 1
            drafter, restarted = _keep_drafter(drafter, args, drafter_endpoint, restarts)
            if metrics is not None:
                metrics.restarts.inc(restarted - restarts)
                metrics.poll()
            restarts = restarted
            if not is_ready and is_healthy(health):
                is_ready = True
                extra = f"; our drafter's counters at {metrics.url}" if metrics is not None else ""
                where = (f"a drafter started elsewhere at {bind_endpoint}" if args.remote_drafter
                         else f"our drafter on {args.draft_device}")
                print(f"ouroboros: vLLM {VLLM_VERSION} serving http://{args.http_host}:{args.http}/v1 with {where}{extra} "
                      "(Ctrl-C to stop)", flush=True)
            elif not is_ready and time.monotonic() > deadline:
                print(f"ouroboros: vLLM not up after {args.ready_timeout:.0f} s (--ready-timeout); stopping",
                      file=sys.stderr, flush=True)
                return 1
            stop.wait(0.5)
        return 0
    finally:
        _stop_all([child for child in (drafter, vllm) if child is not None])
        if metrics is not None:
            metrics.close()


def start_metrics(args: argparse.Namespace, door_endpoint: str) -> DrafterMetrics | None:
    if args.drafter_metrics is None:
        return None
    if not 0 <= args.drafter_metrics <= 65535 or args.drafter_metrics == args.http:
        raise ValueError(f"--drafter-metrics {args.drafter_metrics}: give a free port other than --http's")
    try:
        return DrafterMetrics(door_endpoint, args.http_host, args.drafter_metrics, args.curve_keys)
    except OSError as exc:
        raise ValueError(f"--drafter-metrics {args.drafter_metrics}: cannot serve on {args.http_host}: {exc}") from exc


def _keep_drafter(drafter: subprocess.Popen | None, args: argparse.Namespace, endpoint: str, restarts: int
                  ) -> tuple[subprocess.Popen | None, int]:
    """A drafter that exited is started again; one refused by the door is not (a restart cannot
    help): None from then on, and vLLM decodes alone."""
    if drafter is None or drafter.poll() is None:
        return drafter, restarts
    if drafter.returncode == REFUSED_EXIT_CODE:
        print("ouroboros: the drafter was refused; vLLM decodes alone", file=sys.stderr, flush=True)
        return None, restarts
    print(f"ouroboros: the drafter exited with code {drafter.returncode}; restarting it (restart {restarts + 1})",
          file=sys.stderr, flush=True)
    return subprocess.Popen(drafter_command(args, endpoint)), restarts + 1


def _stop_all(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
