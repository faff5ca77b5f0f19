"""`ouroboros serve --verifier vllm` against real vLLM (its CPU build, `make install-vllm`) with the
built-in pair: greedy text equal to vLLM's own without speculation (float32), drafts accepted by
vLLM's counters and our drafter's (`--drafter-metrics`), 8 clients at once, and a drafter
SIGKILLed mid-load that comes back."""
from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.vllm.conftest import NEEDS_VLLM, PROMPTS, complete, counters, drafted, ours, serving
from verifier.vllm_door import IDLE_S

pytestmark = NEEDS_VLLM


@pytest.fixture(scope="module")
def door(reference):
    with serving() as started:
        yield started


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
