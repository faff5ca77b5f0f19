"""The socket helper and endpoint helpers."""
from __future__ import annotations

import logging

import pytest
import zmq

from protocol.sockets import bind_address, make_socket, warn_if_public


def test_make_socket_sets_bounds_and_timeouts():
    ctx = zmq.Context()
    try:
        sock = make_socket(ctx, zmq.DEALER, linger_ms=5, hwm=7, recv_timeout_ms=100, max_message_bytes=4096)
        assert sock.getsockopt(zmq.LINGER) == 5
        assert (sock.getsockopt(zmq.SNDHWM), sock.getsockopt(zmq.RCVHWM)) == (7, 7)
        assert (sock.getsockopt(zmq.RCVTIMEO), sock.getsockopt(zmq.SNDTIMEO)) == (100, -1)
        assert sock.getsockopt(zmq.MAXMSGSIZE) == 4096
        sock.close()
    finally:
        ctx.term()


def test_oversize_frame_is_dropped_by_zmq():
    ctx = zmq.Context()
    try:
        server = make_socket(ctx, zmq.ROUTER, max_message_bytes=1000)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = make_socket(ctx, zmq.DEALER)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"x" * 2000)
        assert not server.poll(300)
        client.close()
        server.close()
    finally:
        ctx.term()


@pytest.mark.parametrize("host, port, address", [
    ("127.0.0.1", 5555, "tcp://127.0.0.1:5555"),
    ("0.0.0.0", 0, "tcp://0.0.0.0:*"),
    ("::1", 6000, "tcp://[::1]:6000"),
])
def test_bind_address(host, port, address):
    assert bind_address(host, port) == address


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.0.1", "::1", "localhost"])
def test_loopback_hosts_are_quiet(host, caplog):
    assert warn_if_public(host) is None
    assert not caplog.records


@pytest.mark.parametrize("host", ["0.0.0.0", "*", "10.0.0.7", "example.org"])
def test_public_hosts_warn(host, caplog):
    with caplog.at_level(logging.WARNING, logger="protocol.sockets"):
        warning = warn_if_public(host)
    assert warning and host in warning
    assert warning in caplog.text
