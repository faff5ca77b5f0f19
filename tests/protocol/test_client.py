"""Client against a real ROUTER server thread, over tcp loopback and ipc."""
from __future__ import annotations

import time

import pytest

from protocol.client import Chunk, Client
from protocol.errors import ClientClosed, ServerError, ServerTimeout
from protocol.messages import Cancel, Generate
from tests.protocol.fake_server import replies_abc, replies_error, replies_then_silence


def test_generate_returns_streamed_tokens(serve):
    server = serve(replies_abc)
    with Client(server.address, timeout=5.0) as client:
        completion = client.generate("hello", max_new_tokens=3, temperature=0.5, seed=7, stop=["x"])
    request = server.wait_for(Generate)
    assert (request.prompt, request.prompt_ids, request.stream) == ("hello", [], False)
    assert (request.max_new_tokens, request.temperature, request.seed, request.stop) == (3, 0.5, 7, ["x"])
    assert completion.request_id == request.request_id and len(request.request_id) == 32
    assert (completion.token_ids, completion.text) == ([10, 11, 12], "abc")
    usage = (completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
    assert usage == ("length", 5, 3)
    assert (completion.seed, completion.metrics) == (7, {"acceptance_rate": 0.5})


def test_token_id_prompt_goes_in_prompt_ids(serve):
    server = serve(replies_abc)
    with Client(server.address, timeout=5.0) as client:
        assert client.generate([4, 5, 6], stop_token_ids=[2]).prompt_tokens == 3
    request = server.wait_for(Generate)
    assert (request.prompt, request.prompt_ids, request.stop_token_ids) == ("", [4, 5, 6], [2])


def test_stream_yields_every_chunk_in_order_once(serve):
    server = serve(replies_abc)
    with Client(server.address, timeout=5.0) as client:
        stream = client.stream("hi")
        assert list(stream) == [Chunk([10, 11], "ab"), Chunk([12], "c")]
        assert stream.completion.text == "abc"
        assert client.generate("again").text == "abc"  # the client is reusable
    # Both requests were answered, so a Cancel sent after the first would be queued by now.
    received = [server.received.get_nowait() for _ in range(server.received.qsize())]
    assert [type(m) for m in received] == [Generate, Generate]
    assert [m.stream for m in received] == [True, False]


def test_error_reply_raises_server_error(serve):
    server = serve(replies_error)
    with Client(server.address, timeout=5.0) as client:
        with pytest.raises(ServerError) as info:
            client.generate("hi")
    assert (info.value.code, info.value.message) == ("invalid_request", "prompt too long")


def test_no_server_raises_timeout(dead_address):
    start = time.monotonic()
    with Client(dead_address, timeout=0.5) as client:
        with pytest.raises(ServerTimeout, match="timeout=0.5"):
            client.generate("hi")
    assert 0.4 < time.monotonic() - start < 3.0


def test_silence_mid_stream_raises_timeout_and_cancels(serve):
    server = serve(replies_then_silence)
    with Client(server.address, timeout=0.5) as client:
        with pytest.raises(ServerTimeout):
            for _ in client.stream("hi"):
                pass
    request = server.wait_for(Generate)
    assert server.wait_for(Cancel).request_id == request.request_id


def test_early_break_sends_cancel(serve):
    server = serve(replies_then_silence)
    with Client(server.address, timeout=5.0) as client:
        for chunk in client.stream("hi"):
            break
        request = server.wait_for(Generate)
        assert server.wait_for(Cancel).request_id == request.request_id
        assert chunk == Chunk([0], "0")


def test_closed_client_raises(serve):
    server = serve(replies_abc)
    client = Client(server.address, timeout=5.0)
    client.close()
    client.close()  # idempotent
    with pytest.raises(ClientClosed):
        client.generate("hi")
    with pytest.raises(ClientClosed):
        client.stream("hi")
