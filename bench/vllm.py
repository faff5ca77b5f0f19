"""vLLM alone, vLLM with n-gram speculation, vLLM with our drafter (`serve --verifier vllm`) and
our own server (`serve --http`: our engine verifies), one after the other on the same prompts and the same OpenAI-style client:

    python -m bench.vllm --dtype bfloat16 --clients 1,8 --limit 8 --max-new-tokens 128

Prints tokens per second per server and client count, and whether each server's greedy text
equals vLLM's alone."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench.prompts import humaneval_prompts
from models.loading import resolve_path
from launch import config as cfg
from launch.vllm_serve import DEFAULT_VLLM_PYTHON, cpu_env, free_port

NGRAM = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def servers(args: argparse.Namespace, port: int) -> dict[str, list[str]]:
    python = cfg.vllm_python_env() or str(DEFAULT_VLLM_PYTHON)
    plain = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_path("smollm2-135m"),
             "--served-model-name", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port), "--dtype", args.dtype,
             "--max-model-len", "2048"]
    ours = [sys.executable, "-m", "launch.cli", "serve", "--verifier", "vllm", "--http", str(port), "--dtype", args.dtype,
            "--max-len", "2048", *args.door_flags.split()]
    own = [sys.executable, "-m", "launch.cli", "serve", "--http", str(port), "--port", str(free_port()), "--dtype",
           args.dtype, "--max-len", "2048"]
    return {"vllm": plain, "vllm-ngram": [*plain, "--speculative-config", json.dumps(NGRAM)], "vllm+ouroboros": ours,
            "ouroboros": own}


def complete(port: int, prompt: str, max_tokens: int) -> tuple[int, str]:
    body = json.dumps({"model": "smollm2-135m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        out = json.loads(reply.read())
    return out["usage"]["completion_tokens"], out["choices"][0]["text"]


def wait_healthy(port: int, process: subprocess.Popen, seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"server not healthy (exit code {process.poll()})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.vllm", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--limit", type=int, default=8, help="HumanEval prompts (each client count runs them all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--servers", default="vllm,vllm-ngram,vllm+ouroboros", help="which, comma-separated, of vllm, vllm-ngram, vllm+ouroboros, ouroboros")
    parser.add_argument("--door-flags", default="", help="extra flags for `serve --verifier vllm`, in one string")
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    prompts = humaneval_prompts(args.limit)
    counts = [int(c) for c in args.clients.split(",")]
    texts: dict[tuple[str, int], list[str]] = {}
    chosen = args.servers.split(",")
    if unknown := set(chosen) - set(servers(args, 0)):
        parser.error(f"unknown --servers {', '.join(sorted(unknown))}; choose from {', '.join(servers(args, 0))}")
    for name, command in servers(args, port := free_port()).items():
        if name not in chosen:
            continue
        process = subprocess.Popen(command, env=cpu_env(dict(os.environ)), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_healthy(port, process)
            complete(port, prompts[0], 8)  # warm
            for clients in counts:
                started = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    done = list(pool.map(lambda p: complete(port, p, args.max_new_tokens), prompts))
                rate = sum(n for n, _ in done) / (time.perf_counter() - started)
                texts[name, clients] = [t for _, t in done]
                plain_texts = texts.get(("vllm", clients))
                same = "not compared (vllm not run)" if plain_texts is None else texts[name, clients] == plain_texts
                print(f"{name:16s} {clients} clients: {rate:7.1f} tok/s; text equals vllm's: {same}", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
