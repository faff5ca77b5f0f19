"""`ouroboros http-door`: the OpenAI-compatible HTTP door alone, in front of a running verifier
(one started by `serve`, torchrun or a launch script, here or across the network)."""
from __future__ import annotations

import argparse
import signal
import threading

from launch.config import DEFAULT_TARGET, add_security_flags
from protocol.sockets import is_loopback


def add_http_flags(parser: argparse.ArgumentParser, port_flag: str) -> None:
    group = parser.add_argument_group("OpenAI-compatible HTTP door (pip install .[http])")
    group.add_argument(port_flag, type=int, default=None if port_flag == "--http" else 8000, metavar="PORT",
                       help="serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics on "
                            "this port (0 = any free port)")
    group.add_argument("--http-host", default="127.0.0.1", help="interface for HTTP (default loopback only)")
    group.add_argument("--api-key", default=None,
                       help="bearer token HTTP clients must send; required with a non-loopback --http-host")


def add_http_door_parser(sub) -> None:
    door = sub.add_parser("http-door", help="the OpenAI-compatible HTTP door for a running verifier")
    door.add_argument("--connect", required=True, metavar="ADDR", help="the verifier's client endpoint")
    door.add_argument("--target", default=DEFAULT_TARGET, help="the served target: its name and chat template")
    door.add_argument("--timeout", type=float, default=600.0, help="seconds of verifier silence per request")
    add_http_flags(door, "--port")
    add_security_flags(door)


def check_http_flags(port: int | None, host: str, api_key: str | None) -> None:
    if port is None:
        return
    if not 0 <= port <= 65535:
        raise ValueError(f"the HTTP port must be within 0..65535, got {port}")
    if not is_loopback(host) and not api_key:
        raise ValueError(f"--http-host {host} is reachable from other machines: pass --api-key KEY "
                         "(clients send it as a bearer token)")


def start_http_door(target: str, port: int, host: str, api_key: str | None, curve_keys: str | None,
                    endpoint: str | None = None, timeout_s: float = 600.0):
    """The door listening in a daemon thread; `door.endpoint` may be set later (/health answers
    503 until it is). Returns (door, uvicorn server)."""
    try:
        # the HTTP extra (starlette, uvicorn) is optional: imported only with --http
        from gateway.app import HttpDoor, serve_in_thread
    except ImportError as exc:
        raise RuntimeError(f"the HTTP door needs the HTTP extra: pip install '.[http]' ({exc})") from None
    from models.loading import load_tokenizer

    door = HttpDoor(target, load_tokenizer(target), api_key=api_key, curve_keys=curve_keys, timeout_s=timeout_s)
    door.endpoint = endpoint
    server, _, bound = serve_in_thread(door, host, port)
    shown = f"[{host}]" if ":" in host else host
    state = "ready" if endpoint else "starting: /health answers 503 until ready"
    print(f"ouroboros: HTTP on http://{shown}:{bound}/v1 ({state})", flush=True)
    return door, server


def run_http_door(args: argparse.Namespace) -> int:
    check_http_flags(args.port, args.http_host, args.api_key)
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_requested.set())
    _, server = start_http_door(args.target, args.port, args.http_host, args.api_key, args.curve_keys,
                                endpoint=args.connect, timeout_s=args.timeout)
    while not stop_requested.wait(0.2):
        pass
    server.should_exit = True
    return 0
