"""Faults and hostile input: admission, vanished clients, a hung drafter, fuzzed frames."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import msgpack
import psutil
import pytest
import zmq

from launch.serve import LocalPipeline
from protocol import AsyncClient, Client, ServerError
from protocol.codec import encode
from protocol.messages import Draft, ErrorCode, Generate, Hello, Resync, Verdict
from tests.e2e.conftest import serve_args

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def small_pipeline(tiny_dirs):
    """One session at a time, one waiting: admission control is easy to observe."""
    args = serve_args(tiny_dirs["target"], "layers:0", "--max-sessions", "1", "--max-queue", "1")
    with LocalPipeline(args) as pipeline:
        yield pipeline


def test_busy_past_sessions_and_queue_and_long_prompts_refused(small_pipeline):
    async def run():
        async with AsyncClient(small_pipeline.endpoint, timeout=60) as client:
            calls = [client.generate(PROMPT, max_new_tokens=120) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(run())
    busy = [r for r in results if isinstance(r, ServerError)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(busy) == 1 and busy[0].code == "overloaded" and "busy" in busy[0].message
    assert len(done) == 2 and done[0].token_ids == done[1].token_ids  # the queued one ran after
    with Client(small_pipeline.endpoint, timeout=30) as client, pytest.raises(ServerError, match="context"):
        client.generate(list(range(5, 1205)), max_new_tokens=4)


def test_a_client_vanishing_mid_stream_frees_its_session(small_pipeline):
    ctx = zmq.Context.instance()
    for _ in range(2):  # with one session and one queue slot, a leak would show as "busy"
        sock = ctx.socket(zmq.DEALER)
        sock.connect(small_pipeline.endpoint)
        sock.send(encode(Generate(request_id=os.urandom(8).hex(), prompt=PROMPT, max_new_tokens=400)))
        assert sock.poll(30_000)
        sock.recv()  # the first Tokens arrived: the request is running
        sock.close(0)  # vanish
    deadline = time.monotonic() + 30  # the verifier notices at its next send; a leak stays "busy" past this
    with Client(small_pipeline.endpoint, timeout=60) as client:
        while True:
            try:
                first = client.generate(PROMPT, max_new_tokens=16)
                break
            except ServerError as exc:
                if exc.code != ErrorCode.OVERLOADED or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # poll again
        second = client.generate(PROMPT, max_new_tokens=16)
    assert first.token_ids == second.token_ids and len(first.token_ids) == 16


def test_hung_drafter_is_outlived_then_used_again(tiny_dirs):
    with LocalPipeline(serve_args(tiny_dirs["target"], "layers:0")) as pipeline, \
            Client(pipeline.endpoint, timeout=60) as client:
        reference = client.generate(PROMPT, max_new_tokens=80)
        assert reference.metrics["accepted_tokens"] > 0
        os.kill(pipeline.drafter.pid, signal.SIGSTOP)  # longer than --draft-timeout (0.5 s)
        try:
            hung = client.generate(PROMPT, max_new_tokens=80)
        finally:
            os.kill(pipeline.drafter.pid, signal.SIGCONT)
        assert hung.token_ids == reference.token_ids
        assert hung.metrics["target_only_rounds"] > 0
        for _ in range(30):
            again = client.generate(PROMPT, max_new_tokens=80)
            if again.metrics["accepted_tokens"] > 0:
                break
        assert again.token_ids == reference.token_ids and again.metrics["accepted_tokens"] > 0


def hostile_frames(rng: random.Random) -> list[bytes]:
    """Malformed bytes, valid msgpack of the wrong shape, huge declared lengths, wrong
    versions, unknown types, and well-typed messages with hostile values."""
    frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) for _ in range(60)]
    frames += [msgpack.packb(x) for x in ([], {}, 1, "x", [1, 2, 3], {"v": 1}, {"v": 1, "type": "Generate"})]
    frames += [msgpack.packb({"v": v, "type": "Generate", "body": {"request_id": "a"}}) for v in (0, 2, -1, "1")]
    frames += [msgpack.packb({"v": 1, "type": t, "body": {}}) for t in ("Pickle", "__init__", "", "Done")]
    frames += [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\xc6\x7f\xff\xff\xff"]
    frames += [encode(Generate(request_id="h", prompt_ids=[10**9], max_new_tokens=4)),
               encode(Generate(request_id="h2", prompt="x", max_new_tokens=10**6 + 1)),
               encode(Draft(request_id="nobody", base_length=10**6, base_tail=[], trunk=[1] * 60000,
                            branches=[[2] * 50] * 60)),
               encode(Verdict(request_id="nobody", committed_length=3, appended=[1], num_trunk_verified=0,
                              num_trunk_accepted=0, trunk_predictions=[],
                              branch_predictions=[], draft_length=4)),
               encode(Resync(request_id="nobody")),
               encode(Hello(drafter_id="impostor", vocab_size=7, tokenizer_fingerprint="x", max_draft_length=4, max_sessions=4))]
    return frames


def test_fuzzed_frames_leave_both_processes_serving_with_bounded_memory(tiny_dirs):
    with LocalPipeline(serve_args(tiny_dirs["target"], "layers:0")) as pipeline, \
            Client(pipeline.endpoint, timeout=60) as client:
        expected = client.generate(PROMPT, max_new_tokens=24).token_ids
        verifier, drafter = psutil.Process(pipeline.verifier.pid), psutil.Process(pipeline.drafter.pid)
        rss_before = verifier.memory_info().rss
        rng = random.Random(1234)
        ctx = zmq.Context.instance()
        hostile_client, hostile_drafter = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        hostile_client.connect(pipeline.endpoint)
        hostile_drafter.connect(pipeline.drafter_endpoint)
        for round_ in range(5):
            for frame in hostile_frames(rng):
                hostile_client.send(frame)
                hostile_drafter.send(frame)
            hostile_client.send_multipart([b"a", b"b", b"c"])
            assert client.generate(PROMPT, max_new_tokens=24).token_ids == expected  # well-formed peers served
        hostile_client.close(0)
        hostile_drafter.close(0)
        assert pipeline.verifier.poll() is None and pipeline.drafter.poll() is None
        assert verifier.is_running() and drafter.is_running()
        growth = verifier.memory_info().rss - rss_before
        assert growth < 64 * 2**20, f"verifier RSS grew by {growth / 2**20:.0f} MiB"
        done = client.generate(PROMPT, max_new_tokens=24)
        assert done.token_ids == expected and done.metrics["accepted_tokens"] > 0  # still drafted, not hijacked
