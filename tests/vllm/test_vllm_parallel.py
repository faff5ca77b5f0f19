"""vLLM with tensor parallelism and our drafter started elsewhere over CURVE: `serve --verifier vllm
--remote-drafter --drafter-bind tcp://... --curve-keys DIR -- --tensor-parallel-size 3` (the
built-in target's 9 heads and 3 KV heads split three ways, vLLM's three workers sharing this CPU).
Every worker builds our proposer and only the one whose drafts vLLM takes binds the endpoint (two
binding it would stop vLLM at start); a drafter without the keys never gets a frame through, one
with them drafts; vLLM's greedy text stays its own without speculation."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.curve import create_keys
from tests.vllm.conftest import NEEDS_VLLM, PROMPTS, complete, counters, drafted, free_port, ours, serving

pytestmark = NEEDS_VLLM


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> str:
    return str(create_keys(tmp_path_factory.mktemp("keys")))


@pytest.fixture(scope="module")
def parallel_door(keys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with serving("--remote-drafter", "--drafter-bind", endpoint, "--curve-keys", keys,
                 "--", "--tensor-parallel-size", "3") as (port, _, metrics):
        yield port, metrics, endpoint


def start_drafter(endpoint: str, log: Path, *flags: str) -> subprocess.Popen:
    """`ouroboros drafter --connect`, as a user starts it on the draft's own machine."""
    with log.open("w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "drafter", "--connect", endpoint, "--threads", "1",
                                 *flags], stderr=stderr, stdout=subprocess.DEVNULL)


def wait_for_hello(drafter: subprocess.Popen, log: Path, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while "saying Hello" not in log.read_text() and time.monotonic() < deadline:
        assert drafter.poll() is None, log.read_text()[-2000:]
        time.sleep(0.5)
    assert "saying Hello" in log.read_text(), "the drafter never got to its handshake"


def test_tensor_parallel_vllm_with_a_drafter_elsewhere_over_curve(parallel_door, reference, keys, tmp_path):
    port, metrics, endpoint = parallel_door
    intruder = start_drafter(endpoint, tmp_path / "intruder.log")  # no keys: CURVE drops its handshake
    try:
        wait_for_hello(intruder, tmp_path / "intruder.log")
        for prompt in PROMPTS[:2]:  # meanwhile vLLM decodes with the door's lookup alone
            assert complete(port, prompt) == reference[prompt]
        time.sleep(1.5)  # the latest answer is at most a second old
        assert ours(metrics)["ouroboros:drafter_present"] == 0
    finally:
        intruder.kill()
        intruder.wait()
    drafter = start_drafter(endpoint, tmp_path / "drafter.log", "--curve-keys", keys)
    try:
        wait_for_hello(drafter, tmp_path / "drafter.log")
        before = counters(port)
        for prompt in PROMPTS * 2:
            assert complete(port, prompt) == reference[prompt]
            if drafted(metrics) > 0:
                break
        else:
            raise AssertionError("no draft of the keyed drafter's was verified")
        assert ours(metrics)["ouroboros:drafter_present"] == 1
        assert counters(port)["num_accepted_tokens"] > before.get("num_accepted_tokens", 0)
    finally:
        drafter.kill()
        drafter.wait()
