"""The two-process pipeline over real sockets against the target's own greedy decoding."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import zmq

from ouroboros.cli import build_parser
from models.loading import load_model, load_tokenizer
from launch.serve import LocalPipeline
from protocol.client import Client
from bench.prompts import humaneval_prompts, load_prompts
from tests.conftest import reference_greedy
from tests.e2e.conftest import serve_args

PROMPTS = ["def add(a, b):", "Once upon a time", "import numpy as np\n", "The quick brown fox"]


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    model = load_model(tiny_dirs["target"])
    tokenizer = load_tokenizer(tiny_dirs["target"])
    eos = tokenizer.eos_token_id

    def greedy(prompt: str, max_new: int) -> list[int]:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return reference_greedy(model, ids, max_new, stop=[eos])

    return greedy


def test_tcp_identical_to_target(self_draft_pipeline, reference):
    with Client(self_draft_pipeline.endpoint, timeout=60) as client:
        for prompt in PROMPTS:
            completion = client.generate(prompt, max_new_tokens=48)
            assert completion.token_ids == reference(prompt, 48)
            assert completion.metrics["drafted_tokens"] > 0 and completion.metrics["accepted_tokens"] > 0


def test_drafts_ahead_while_verifying_with_pre_drafts_on(tiny_dirs, reference):
    """--pre-drafts on (on this shared CPU the default is to take turns): the drafter drafts the
    next block while the target checks the current one, and with a draft that predicts the
    target exactly (tiny_dirs) each block drafted ahead is the one the verdict needs."""
    args = serve_args(tiny_dirs["target"], "layers:0", "--pre-drafts", "on")
    with LocalPipeline(args) as pipeline, Client(pipeline.endpoint, timeout=60) as client:
        # long enough that rounds drafting ahead follow the decision's first timed rounds (which
        # alternate a draft and none) on a loaded machine too
        completion = client.generate(PROMPTS[0], max_new_tokens=192)
    assert completion.token_ids == reference(PROMPTS[0], 192)
    assert completion.metrics["predrafts_used"] > 0 and completion.metrics["predraft_hit_rate"] > 0
    assert not os.path.exists(pipeline.workdir)  # the drafter socket's folder goes with the pipeline


def test_builtin_pair_with_the_speculation_cache_is_identical(builtin_pair):
    """--pre-drafts on with the built-in pair on prose, where most rounds draft and the draft is
    often wrong: verdicts land on every kind of outcome, and greedy and seeded sampling stay the
    target's own."""
    from launch.reference import target_alone
    from verifier.sampling import SamplingParams

    tokenizer = builtin_pair.tokenizer
    prose = load_prompts(str(Path(__file__).parents[2] / "bench" / "prompts" / "prose.jsonl"), 2)[1]
    ids = tokenizer(prose, add_special_tokens=False)["input_ids"]  # prose: drafts pay, rounds draft
    eos = [tokenizer.eos_token_id]
    expected = reference_greedy(builtin_pair.target, ids, 96, stop=eos)
    sampling = SamplingParams(0.7, 0, 0.9, 17)
    sampled_ref = target_alone(builtin_pair.target, ids, 32, eos, sampling)
    args = build_parser().parse_args(["serve", "--port", "0", "--ready-timeout", "300", "--pre-drafts", "on"])
    with LocalPipeline(args) as pipeline, Client(pipeline.endpoint, timeout=120) as client:
        completion = client.generate(ids, max_new_tokens=96)
        sampled = client.generate(ids, max_new_tokens=32, temperature=0.7, top_p=0.9, seed=17)
        status = client.status()
    assert completion.token_ids == expected and sampled.token_ids == sampled_ref
    # how many rounds draft, and so hit, is the decision's, from timings (tests/drafter: a hit
    # answered with no draft pass, a miss drafted afresh); every draft verified is one or the other
    assert status.num_drafts > 0 and status.num_predraft_hits + status.num_predraft_misses == status.num_drafts


def test_builtin_pair_taking_turns_on_a_shared_cpu_is_identical_and_drafts_nothing_ahead(builtin_pair):
    """The default where both processes share this CPU (--pre-drafts auto): the drafter drafts
    only while the verifier waits, so no draft is ever used ahead of its base."""
    prompt = humaneval_prompts(2)[1]
    ids = builtin_pair.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    expected = reference_greedy(builtin_pair.target, ids, 32, stop=[builtin_pair.tokenizer.eos_token_id])
    args = build_parser().parse_args(["serve", "--port", "0", "--ready-timeout", "300"])
    with LocalPipeline(args) as pipeline, Client(pipeline.endpoint, timeout=120) as client:
        completion = client.generate(ids, max_new_tokens=32)
    assert args.pre_drafts == "off"  # auto, resolved for two processes on this CPU
    assert completion.token_ids == expected
    assert completion.metrics["predrafts_used"] == 0 and completion.metrics["drafted_tokens"] > 0


def test_stream_delivers_every_token_once_in_order(self_draft_pipeline, reference):
    with Client(self_draft_pipeline.endpoint, timeout=60) as client:
        stream = client.stream(PROMPTS[0], max_new_tokens=64)
        chunks = list(stream)
    tokens = [t for chunk in chunks for t in chunk.token_ids]
    assert tokens == stream.completion.token_ids == reference(PROMPTS[0], 64)
    assert "".join(c.text for c in chunks) == stream.completion.text
    assert len(chunks) > 1


def test_concurrent_clients_all_identical(self_draft_pipeline, reference):
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with Client(self_draft_pipeline.endpoint, timeout=120) as client:
                results[i] = client.generate(PROMPTS[i % len(PROMPTS)], max_new_tokens=40).token_ids
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for i in range(6):
        assert results[i] == reference(PROMPTS[i % len(PROMPTS)], 40)


def test_garbage_frames_leave_both_processes_answering(self_draft_pipeline, reference, tiny_dirs):
    ctx = zmq.Context.instance()
    junk = [b"", b"\x00\xff garbage", b"\x93\x01\x02\x03", b"\xdd\xff\xff\xff\xff", b"\x81\xa1v\x02" * 50]
    client_side = ctx.socket(zmq.DEALER)
    client_side.connect(self_draft_pipeline.endpoint)
    drafter_side = ctx.socket(zmq.DEALER)
    drafter_side.connect(self_draft_pipeline.drafter_endpoint)
    for frame in junk:
        client_side.send(frame)
        drafter_side.send(frame)
    client_side.send_multipart([b"two", b"frames"])
    assert client_side.poll(5000)  # the malformed request got an Error reply
    client_side.close(0)
    drafter_side.close(0)
    assert self_draft_pipeline.check() is None
    with Client(self_draft_pipeline.endpoint, timeout=60) as client:
        completion = client.generate(PROMPTS[1], max_new_tokens=32)
    assert completion.token_ids == reference(PROMPTS[1], 32)
    assert completion.metrics["accepted_tokens"] > 0  # the drafter still drafts


def test_ipc_with_an_unrelated_draft_stays_identical(tiny_dirs, reference, tmp_path):
    # another model as the draft: the first request, with no evidence of it yet, has its drafts
    # verified whatever the costs (the decision measures before it judges)
    args = serve_args(tiny_dirs["target"], tiny_dirs["other"], "--bind", f"ipc://{tmp_path}/client.sock",
                      "--gamma", "2", "--window", "0", "--phrases-checked", "0")
    with LocalPipeline(args) as pipeline:
        assert pipeline.endpoint.startswith("ipc://")
        with Client(pipeline.endpoint, timeout=60) as client:
            completions = [client.generate(prompt, max_new_tokens=40) for prompt in PROMPTS[:2]]
    for prompt, completion in zip(PROMPTS, completions):
        assert completion.token_ids == reference(prompt, 40)
    assert completions[0].metrics["drafted_tokens"] > 0


def test_drafter_killed_mid_request_then_restarted_and_resynced(tiny_dirs, reference):
    with LocalPipeline(serve_args(tiny_dirs["target"], "layers:0")) as pipeline:
        with Client(pipeline.endpoint, timeout=60) as client:
            stream = client.stream(PROMPTS[2], max_new_tokens=300)
            tokens = []
            for i, chunk in enumerate(stream):
                tokens += chunk.token_ids
                if i == 1:
                    pipeline.drafter.kill()
            assert tokens == reference(PROMPTS[2], 300)
            assert stream.completion.metrics["target_only_rounds"] > 0
            pipeline.drafter.wait(10)
            assert pipeline.check() is None  # supervisor restarts the drafter
            assert pipeline.num_drafter_restarts == 1
            completion = None
            for _ in range(60):  # the new drafter loads, says Hello, and is used again
                completion = client.generate(PROMPTS[3], max_new_tokens=40)
                if completion.metrics["accepted_tokens"] > 0:
                    break
            assert completion.token_ids == reference(PROMPTS[3], 40)
            assert completion.metrics["accepted_tokens"] > 0


@pytest.mark.parametrize("temperature, top_k, top_p, seed", [(0.8, 0, 0.95, 3), (1.2, 40, 1.0, 11), (0.5, 0, 0.8, 29)])
def test_pipeline_sampling_identical_to_keyed_target_alone(self_draft_pipeline, tiny_dirs, temperature, top_k, top_p, seed):
    from launch.reference import target_alone
    from verifier.sampling import SamplingParams

    model = load_model(tiny_dirs["target"])
    tokenizer = load_tokenizer(tiny_dirs["target"])
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature, top_k, top_p, seed)
    ref = target_alone(model, ids, 64, [tokenizer.eos_token_id], params)
    with Client(self_draft_pipeline.endpoint, timeout=60) as client:
        completion = client.generate(PROMPTS[0], max_new_tokens=64, temperature=temperature, top_k=top_k,
                                     top_p=top_p, seed=seed)
        again = client.generate(PROMPTS[0], max_new_tokens=64, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed)
        unseeded = client.generate(PROMPTS[0], max_new_tokens=8, temperature=temperature)
    assert completion.token_ids == ref == again.token_ids  # reproducible and lossless
    assert completion.seed == seed
    assert unseeded.seed is not None  # drawn by the server and reported


def test_stop_strings_end_the_text_before_them(self_draft_pipeline, reference, tiny_dirs):
    tokenizer = load_tokenizer(tiny_dirs["target"])
    full_tokens = reference(PROMPTS[1], 48)
    full_text = tokenizer.decode(full_tokens)
    stop = full_text[len(full_text) // 2 : len(full_text) // 2 + 3]
    with Client(self_draft_pipeline.endpoint, timeout=60) as client:
        stream = client.stream(PROMPTS[1], max_new_tokens=48, stop=[stop])
        text = "".join(chunk.text for chunk in stream)
    completion = stream.completion
    assert completion.finish_reason == "stop"
    assert text == completion.text == full_text[: full_text.index(stop)]  # excluded
    assert completion.token_ids == full_tokens[: len(completion.token_ids)]
    assert stop in tokenizer.decode(completion.token_ids)  # the tokens include the one completing it
    assert stop not in tokenizer.decode(completion.token_ids[:-1])
