"""`ouroboros serve --http`: the official openai client, curl-style raw HTTP and Prometheus's
parser against a real server (real processes, sockets and models), compared with the target alone."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.loading import load_model, load_tokenizer
from launch.reference import target_alone
from protocol import Client
from tests.gateway.serving import start_http_serve, stop
from verifier.sampling import SamplingParams

API_KEY = "test-key"
PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\n", "The quick brown fox", "class Stack:\n    def"]


@pytest.fixture(scope="module")
def door(tiny_dirs):
    # the draft predicts exactly what the target does, at an eighth of its layers (tiny_dirs): it
    # clearly pays, so drafts are verified on every request by the default decision
    served = start_http_serve(tiny_dirs["target"], "--draft", "layers:0", "--api-key", API_KEY,
                              "--max-sessions", "16")
    yield served
    stop(served.proc)


@pytest.fixture(scope="module")
def target(tiny_dirs):
    return load_model(tiny_dirs["target"]), load_tokenizer(tiny_dirs["target"])


@pytest.fixture(scope="module")
def api(door):
    return openai.OpenAI(base_url=door.http + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def reference_text(target, prompt_ids, max_new_tokens, sampling=None):
    model, tokenizer = target
    tokens = target_alone(model, prompt_ids, max_new_tokens, [tokenizer.eos_token_id], sampling)
    return tokens, tokenizer.decode(tokens, skip_special_tokens=True)


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_health_is_503_until_ready_then_names_the_drafter(door):
    assert door.health_before_ready == 503
    status, _, body = get(door.http + "/health")
    assert status == 200
    assert json.loads(body)["drafter"] == "present"


def test_completion_equals_the_target_alone(api, target):
    ids = target[1](PROMPTS[0], add_special_tokens=False)["input_ids"]
    tokens, text = reference_text(target, ids, 24)
    reply = api.completions.create(model=door_model(api), prompt=PROMPTS[0], max_tokens=24, temperature=0)
    assert reply.choices[0].text == text
    assert reply.usage.completion_tokens == len(tokens)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.choices[0].finish_reason == "length"


def door_model(api) -> str:
    return api.models.list().data[0].id


def test_streamed_completion_and_chat_equal_the_target_alone(api, target):
    model, tokenizer = target
    ids = tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    _, text = reference_text(target, ids, 32)
    chunks = list(api.completions.create(model=door_model(api), prompt=PROMPTS[1], max_tokens=32, temperature=0,
                                         stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"

    messages = [{"role": "user", "content": "Write a haiku about caches."}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    _, chat_text = reference_text(target, chat_ids, 20)
    whole = api.chat.completions.create(model=door_model(api), messages=messages, max_tokens=20, temperature=0)
    assert whole.choices[0].message.content == chat_text
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == len(chat_ids)
    pieces = list(api.chat.completions.create(model=door_model(api), messages=messages, max_tokens=20,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    assert pieces[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == chat_text
    assert pieces[-1].usage.completion_tokens == 20


def test_seeded_sampling_is_reproducible_and_equals_the_target_alone(api, target):
    ids = target[1](PROMPTS[2], add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=17)
    _, text = reference_text(target, ids, 32, params)
    kwargs = dict(model=door_model(api), prompt=PROMPTS[2], max_tokens=32, temperature=0.8, top_p=0.9, seed=17,
                  extra_body={"top_k": 40})
    first = api.completions.create(**kwargs)
    again = api.completions.create(**kwargs)
    assert first.choices[0].text == again.choices[0].text == text


def test_bad_requests_get_openai_errors(api, door):
    with pytest.raises(openai.BadRequestError, match="n=1"):
        api.completions.create(model=door_model(api), prompt="x", n=2)
    with pytest.raises(openai.BadRequestError, match="max context"):
        api.completions.create(model=door_model(api), prompt=list(range(5, 1200)), max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        api.completions.create(model=door_model(api), prompt="x", temperature=-1)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-model", prompt="x")
    status, _, body = post(door.http + "/v1/completions", {"prompt": "x"})  # no API key
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, body = post(door.http + "/v1/chat/completions", {"messages": []},
                           {"Authorization": f"Bearer {API_KEY}"})
    assert status == 400 and json.loads(body)["error"]["param"] == "messages"


def test_metrics_parse_and_counters_move(api, door):
    def families() -> dict:
        status, headers, body = get(door.http + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def total(found, name, **labels) -> float:
        return sum(s.value for s in found[name].samples
                   if s.name == name + "_total" and all(s.labels.get(k) == v for k, v in labels.items()))

    before = families()
    api.completions.create(model=door_model(api), prompt=PROMPTS[3], max_tokens=12, temperature=0)
    after = families()
    assert total(after, "ouroboros:request_success", finished_reason="length") == \
        total(before, "ouroboros:request_success", finished_reason="length") + 1
    assert total(after, "ouroboros:generation_tokens") == total(before, "ouroboros:generation_tokens") + 12
    assert total(after, "ouroboros:spec_decode_num_drafts") > total(before, "ouroboros:spec_decode_num_drafts")
    accepted = total(after, "ouroboros:spec_decode_num_accepted_tokens")
    assert accepted > 0  # the draft is the target's own first layer: it is accepted
    assert accepted == total(after, "ouroboros:spec_decode_num_accepted_tokens_per_pos")  # each accepted token once
    drafts = [total(found, "ouroboros:predraft_hits") + total(found, "ouroboros:predraft_misses")
              for found in (before, after)]
    assert drafts[1] - drafts[0] == total(after, "ouroboros:spec_decode_num_drafts") - \
        total(before, "ouroboros:spec_decode_num_drafts")  # every draft verified is a hit or a miss
    assert total(after, "ouroboros:draft_wait_seconds") >= total(before, "ouroboros:draft_wait_seconds")
    assert after["ouroboros:drafter_present"].samples[0].value == 1
    assert after["ouroboros:time_to_first_token_seconds"].samples  # a histogram with observations


def test_a_client_that_leaves_mid_stream_cancels_its_request(api, door):
    with Client(door.zmq, timeout=10) as client:
        before = client.status().generation_tokens
        stream = api.completions.create(model=door_model(api), prompt=PROMPTS[0], max_tokens=900, temperature=0,
                                        stream=True)
        pieces = iter(stream)
        next(pieces), next(pieces)
        stream.close()
        deadline = time.monotonic() + 60
        while client.status().running and time.monotonic() < deadline:
            time.sleep(0.05)
        status = client.status()
    assert status.running == 0
    assert status.generation_tokens - before < 900  # cancelled, not decoded to the end


def test_sixteen_concurrent_streams_are_complete_in_order_and_lossless(door, target):
    model, tokenizer = target
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} # variant {i}\n" for i in range(16)]
    expected = [reference_text(target, tokenizer(p, add_special_tokens=False)["input_ids"], 24)[1] for p in prompts]
    api = openai.OpenAI(base_url=door.http + "/v1", api_key=API_KEY, max_retries=0, timeout=300)
    name = door_model(api)
    start = threading.Barrier(16)

    def run(prompt: str) -> tuple[str, str | None]:
        start.wait(timeout=60)
        chunks = list(api.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0, stream=True))
        return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, prompts))
    assert [text for text, _ in results] == expected
    assert all(reason == "length" for _, reason in results)


def test_a_public_http_host_needs_an_api_key(tiny_dirs):
    cmd = [sys.executable, "-m", "ouroboros.cli", "serve", "--target", tiny_dirs["target"], "--draft", "layers:0",
           "--http", "0", "--http-host", "0.0.0.0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("ouroboros: error: --http-host 0.0.0.0")


def test_builtin_chat_ends_at_the_stop_token_which_the_text_never_shows():
    """The built-in instruct target ends a chat answer with <|im_end|>: finish_reason says
    stop, and neither the HTTP nor the ZeroMQ text holds the token."""
    served = start_http_serve("smollm2-135m")
    try:
        api = openai.OpenAI(base_url=served.http + "/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "Say hi in three words."}]
        reply = api.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=60, temperature=0)
        tokenizer = load_tokenizer("smollm2-135m")
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        with Client(served.zmq, timeout=120) as client:
            completion = client.generate(rendered, max_new_tokens=60)
    finally:
        stop(served.proc)
    assert reply.choices[0].finish_reason == completion.finish_reason == "stop"
    assert completion.token_ids[-1] == tokenizer.eos_token_id
    assert reply.choices[0].message.content == completion.text == tokenizer.decode(completion.token_ids[:-1])
    assert "<|" not in completion.text and completion.text.strip()


def test_a_queued_client_that_leaves_is_dropped_and_a_full_queue_answers_503():
    """The built-in target, slow enough here (about 20 tokens/s) that the busy request holds the
    one session for the whole test; a tiny model may finish 900 tokens in a second."""
    served = start_http_serve("smollm2-135m", "--max-sessions", "1", "--max-queue", "1")
    try:
        api = openai.OpenAI(base_url=served.http + "/v1", api_key="unused", max_retries=0, timeout=120)
        busy = api.completions.create(model=door_model(api), prompt=PROMPTS[0], max_tokens=2000, temperature=0,
                                      stream=True)
        next(iter(busy))  # the one session is taken
        impatient = openai.OpenAI(base_url=served.http + "/v1", api_key="unused", max_retries=0, timeout=1.5)
        with pytest.raises(openai.APITimeoutError):  # queued, no first token: it gives up and leaves
            impatient.completions.create(model=door_model(api), prompt="x", max_tokens=4, stream=True)
        with Client(served.zmq, timeout=10) as client:
            deadline = time.monotonic() + 30
            while client.status().queued and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.status().queued == 0  # its Cancel reached the verifier
        waiting = ThreadPoolExecutor(1).submit(post, served.http + "/v1/completions", {"prompt": "y", "max_tokens": 2})
        with Client(served.zmq, timeout=10) as client:
            while client.status().queued == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        status, headers, body = post(served.http + "/v1/completions", {"prompt": "x", "max_tokens": 4})
        busy.close()
        assert waiting.result(timeout=120)[0] == 200  # the queued one is served once the session frees
    finally:
        stop(served.proc)
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"]["code"] == "overloaded"
