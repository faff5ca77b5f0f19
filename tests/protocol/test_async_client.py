"""AsyncClient against a real ROUTER server thread, over tcp loopback and ipc (asyncio.run, no plugin)."""
from __future__ import annotations

import asyncio
import time

import pytest

from protocol.async_client import AsyncClient
from protocol.client import Chunk
from protocol.errors import ClientClosed, ServerError, ServerTimeout
from protocol.messages import Cancel, Generate
from tests.protocol.fake_server import replies_abc, replies_error, replies_then_silence


async def wait_for_cancel(server, timeout: float = 3.0) -> list:
    """All the server received up to a Cancel, polled without blocking the event loop."""
    deadline, received = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        received += [server.received.get_nowait() for _ in range(server.received.qsize())]
        if any(isinstance(m, Cancel) for m in received):
            return received
        await asyncio.sleep(0.02)
    raise AssertionError("server saw no Cancel")


def test_generate_returns_streamed_tokens(serve):
    server = serve(replies_abc)

    async def main():
        async with AsyncClient(server.address, timeout=5.0) as client:
            return await client.generate([1, 2], seed=3)

    completion = asyncio.run(main())
    request = server.wait_for(Generate)
    assert (request.prompt_ids, request.stream, completion.request_id) == ([1, 2], False, request.request_id)
    assert (completion.token_ids, completion.text, completion.seed) == ([10, 11, 12], "abc", 3)


def test_stream_yields_every_chunk_in_order_once(serve):
    server = serve(replies_abc)

    async def main():
        async with AsyncClient(server.address, timeout=5.0) as client:
            stream = client.stream("hi")
            chunks = [chunk async for chunk in stream]
            return chunks, stream.completion

    chunks, completion = asyncio.run(main())
    assert chunks == [Chunk([10, 11], "ab"), Chunk([12], "c")]
    assert (completion.finish_reason, completion.completion_tokens) == ("length", 3)


def test_concurrent_requests_share_one_client(serve):
    server = serve(replies_abc)

    async def main():
        async with AsyncClient(server.address, timeout=5.0) as client:
            return await asyncio.gather(*(client.generate(f"p{i}") for i in range(4)))

    completions = asyncio.run(main())
    assert [c.text for c in completions] == ["abc"] * 4
    assert len({c.request_id for c in completions}) == 4


def test_error_reply_raises_server_error(serve):
    server = serve(replies_error)

    async def main():
        async with AsyncClient(server.address, timeout=5.0) as client:
            await client.generate("hi")

    with pytest.raises(ServerError, match="invalid_request: prompt too long"):
        asyncio.run(main())


def test_no_server_raises_timeout(dead_address):
    async def main():
        async with AsyncClient(dead_address, timeout=0.5) as client:
            await client.generate("hi")

    start = time.monotonic()
    with pytest.raises(ServerTimeout, match="timeout=0.5"):
        asyncio.run(main())
    assert 0.4 < time.monotonic() - start < 3.0


def test_early_break_sends_cancel(serve):
    server = serve(replies_then_silence)

    async def main():
        async with AsyncClient(server.address, timeout=5.0) as client:
            async for chunk in client.stream("hi"):
                break  # dropping the stream closes it, which sends Cancel
            return chunk, await wait_for_cancel(server)

    chunk, received = asyncio.run(main())
    assert chunk == Chunk([0], "0")
    assert [type(m) for m in received] == [Generate, Cancel]
    assert received[0].request_id == received[1].request_id


def test_closed_client_raises(serve):
    server = serve(replies_then_silence)

    async def main():
        client = AsyncClient(server.address, timeout=5.0)
        stream = client.stream("hi")
        assert await stream.__anext__() == Chunk([0], "0")
        client.close()
        with pytest.raises(ClientClosed):
            await stream.__anext__()  # an open request fails at once, not after the timeout
        with pytest.raises(ClientClosed):
            await client.generate("hi")

    asyncio.run(main())
