"""The one helper that makes every ZeroMQ socket, and endpoint helpers."""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator

import zmq

from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import MAX_FRAME_BYTES

log = logging.getLogger(__name__)


def make_socket(
    ctx: zmq.Context,
    kind: int,
    *,
    linger_ms: int = 0,
    hwm: int = 1000,
    recv_timeout_ms: int | None = None,
    send_timeout_ms: int | None = None,
    max_message_bytes: int = MAX_FRAME_BYTES,
    ipv6: bool = False,
) -> zmq.Socket:
    """A socket with bounded queues and timeouts; zmq itself drops frames over max_message_bytes.

    Works for zmq.asyncio contexts too (returns a zmq.asyncio.Socket). None timeout = block.
    """
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.RCVTIMEO, -1 if recv_timeout_ms is None else recv_timeout_ms)
    sock.setsockopt(zmq.SNDTIMEO, -1 if send_timeout_ms is None else send_timeout_ms)
    # Checked per frame on receive; a peer that sends a larger frame is disconnected.
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if ipv6:
        sock.setsockopt(zmq.IPV6, 1)
    return sock


def bind_address(host: str, port: int) -> str:
    """tcp endpoint for binding: port 0 means any free port; IPv6 hosts get brackets."""
    port_part = "*" if port == 0 else str(port)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port_part}"


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_public(host: str, is_authenticated: bool = False) -> str | None:
    """Log and return a warning when `host` is reachable from other machines without CURVE."""
    if is_loopback(host) or is_authenticated:
        return None
    warning = (
        f"binding to non-loopback host {host!r} without authentication: anyone who can reach it may "
        "submit requests (use --curve-keys DIR, keys from `ouroboros keys DIR`)"
    )
    log.warning(warning)
    return warning


def recv_routed(socket: zmq.Socket) -> tuple[bytes, bytes]:
    """(identity, frame) from a ROUTER without blocking: zmq.Again when none waits, ValueError
    when the message is not one identity and one frame."""
    parts = socket.recv_multipart(zmq.NOBLOCK)
    if len(parts) != 2:
        raise ValueError(f"expected identity + one frame, got {len(parts)} frames")
    return parts[0], parts[1]


def waiting_messages(socket: zmq.Socket, peer: str, is_routed: bool, limit: int = 1024) -> Iterator[tuple[bytes, object]]:
    """The decoded messages waiting on `socket`, at most `limit`, without blocking: (identity,
    message) from a ROUTER (`is_routed`), (b"", message) otherwise. A malformed one is logged
    (naming `peer`) and skipped."""
    for _ in range(limit):
        try:
            identity, frame = recv_routed(socket) if is_routed else (b"", socket.recv(zmq.NOBLOCK))
            msg = decode(frame)
        except zmq.Again:
            return
        except (ValueError, ProtocolError) as exc:
            log.warning("dropped a malformed message from the %s: %s", peer, exc)
            continue
        yield identity, msg
