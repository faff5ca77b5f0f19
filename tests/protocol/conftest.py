"""Fixtures for the client tests: endpoints (tcp and ipc), a fake server factory, a dead address."""
from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator

import pytest

from tests.protocol.fake_server import FakeServer, Handler


@pytest.fixture(params=["tcp", "ipc"])
def endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """'tcp' (a free loopback port, chosen at bind) or an ipc path in a fresh short temp dir."""
    if request.param == "tcp":
        yield "tcp"
        return
    directory = tempfile.mkdtemp(prefix="ouro")
    yield f"ipc://{directory}/verifier.ipc"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def serve(endpoint: str) -> Iterator[Callable[[Handler], FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        servers.append(FakeServer(endpoint, handler).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def dead_address(endpoint: str) -> Iterator[str]:
    """An address where nothing listens."""
    if endpoint != "tcp":
        yield endpoint
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield f"tcp://127.0.0.1:{port}"
