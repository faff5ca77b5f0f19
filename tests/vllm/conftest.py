"""Real vLLM (its CPU build, `make install-vllm`) with the built-in pair: the helpers and vLLM's
own greedy text without speculation, which every test here compares with."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from bench.prompts import humaneval_prompts
from models.loading import resolve_path
from launch.vllm_serve import DEFAULT_VLLM_PYTHON, cpu_env

PYTHON = os.environ.get("OUROBOROS_VLLM_PYTHON") or str(DEFAULT_VLLM_PYTHON)
HAS_VLLM = os.access(PYTHON, os.X_OK)
PROMPTS = humaneval_prompts(8)
NEW_TOKENS = 48
START_S = 600  # vLLM compiles the model at its first start on a CPU
# A module's first test also waits for its fixtures: vLLM alone for the reference text, then the
# door (two starts of up to START_S each on a slow CPU); pytest's 600 s per test does not cover them.
NEEDS_VLLM = [pytest.mark.skipif(not HAS_VLLM, reason="vLLM's venv is missing: run `make install-vllm`"),
              pytest.mark.timeout(3 * START_S)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def complete(port: int, prompt: str) -> str:
    body = json.dumps({"model": "smollm2-135m", "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0,
                       "ignore_eos": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())["choices"][0]["text"]


def counters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = {}
    for line in text.splitlines():
        for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
            if line.startswith(f"vllm:spec_decode_{name}_total{{"):
                found[name] = float(line.rsplit(" ", 1)[1])
    return found


def ours(port: int) -> dict[str, float]:
    """`--drafter-metrics`: our drafter's series (the door answers between vLLM's steps)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("ouroboros:")}


def drafted(port: int) -> float:
    """Rounds vLLM verified our drafter's trunk in (not the door's own prompt lookup)."""
    found = ours(port)
    return found.get("ouroboros:predraft_hits_total", 0) + found.get("ouroboros:predraft_misses_total", 0)


def wait_healthy(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with code {process.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError("vLLM not healthy in time")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT if process.args[:3] == [sys.executable, "-m", "ouroboros.cli"] else signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serving(*flags: str):
    """`ouroboros serve --verifier vllm [flags]`, healthy: (its HTTP port, the process, the --drafter-metrics port)."""
    port, metrics = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "serve", "--verifier", "vllm", "--http", str(port),
                                "--max-len", "2048", "--ready-timeout", str(START_S), "--drafter-metrics", str(metrics),
                                *flags], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(port, process)
        yield port, process, metrics
    finally:
        stop(process)


@pytest.fixture(scope="session")
def reference() -> dict[str, str]:
    """vLLM's own greedy text, without speculation."""
    port = free_port()
    env = cpu_env(dict(os.environ))
    process = subprocess.Popen([PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_path("smollm2-135m"),
                                "--served-model-name", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port),
                                "--dtype", "float32", "--max-model-len", "2048"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, process)
        return {prompt: complete(port, prompt) for prompt in PROMPTS}
    finally:
        stop(process)
