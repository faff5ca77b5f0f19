"""`ouroboros serve --verifier vllm` against real vLLM (its CPU build, `make install-vllm`) with the
built-in pair: greedy text equal to vLLM's own without speculation (float32), drafts accepted by
vLLM's counters and our drafter's (`--drafter-metrics`), 8 clients at once, and a drafter
SIGKILLed mid-load that comes back."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from bench.prompts import humaneval_prompts
from models.loading import resolve_path
from launch.vllm_serve import DEFAULT_VLLM_PYTHON, cpu_env
from verifier.vllm_door import IDLE_S

PYTHON = os.environ.get("OUROBOROS_VLLM_PYTHON") or str(DEFAULT_VLLM_PYTHON)
pytestmark = pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason="vLLM's venv is missing: run `make install-vllm`")
PROMPTS = humaneval_prompts(8)
NEW_TOKENS = 48
START_S = 600  # vLLM compiles the model at its first start on a CPU


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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def door(reference):
    port, metrics = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "serve", "--verifier", "vllm", "--http", str(port),
                                "--max-len", "2048", "--ready-timeout", str(START_S), "--drafter-metrics", str(metrics)],
                               stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(port, process)
        yield port, process, metrics
    finally:
        stop(process)


def drafters(serve: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(serve.pid).children() if "drafter" in p.cmdline()]


def test_greedy_text_equals_vllm_alone_and_drafts_are_accepted(door, reference):
    port, _, metrics = door
    before = counters(port)
    for prompt in PROMPTS[:4]:
        assert complete(port, prompt) == reference[prompt]
    after = counters(port)
    assert after["num_draft_tokens"] > before.get("num_draft_tokens", 0)
    assert after["num_accepted_tokens"] > before.get("num_accepted_tokens", 0)
    time.sleep(1.5)  # the latest answer is at most a second old
    assert ours(metrics)["ouroboros:drafter_present"] == 1 and drafted(metrics) > 0


def test_eight_clients_at_once(door, reference):
    port, _, metrics = door
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda p: complete(port, p), PROMPTS))
    assert texts == [reference[p] for p in PROMPTS]
    time.sleep(IDLE_S + 3)  # vLLM idle: the door's watch closes the finished rows' sessions, here and at the drafter
    found = ours(metrics)
    assert found["ouroboros:num_requests_running"] == found["ouroboros:num_requests_waiting"] == 0
    assert found["ouroboros:drafter_status_age_seconds"] < 3  # answered while vLLM idles


def test_a_killed_drafter_loses_nothing_and_comes_back(door, reference):
    port, serve, metrics = door
    (first,) = drafters(serve)
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(complete, port, p) for p in PROMPTS[:4]]
        time.sleep(1.0)
        first.kill()  # SIGKILL, mid-load
        texts = [future.result() for future in pending]
    assert texts == [reference[p] for p in PROMPTS[:4]]
    deadline = time.monotonic() + 60
    while not [p for p in drafters(serve) if p.pid != first.pid] and time.monotonic() < deadline:
        time.sleep(0.5)
    (second,) = drafters(serve)
    assert second.pid != first.pid
    for prompt in PROMPTS * 4:  # it loads its model and says Hello; the door re-syncs and drafts come again
        before = drafted(metrics)
        assert complete(port, prompt) == reference[prompt]
        if ours(metrics).get("ouroboros:drafter_restarts_total", 0) >= 1 and drafted(metrics) > before:
            break
    else:
        raise AssertionError("no draft of the restarted drafter's was verified")
    assert ours(metrics)["ouroboros:drafter_process_restarts_total"] == 1
