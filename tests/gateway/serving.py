"""Start `ouroboros serve --http 0` as a user would and read its two ready lines."""
from __future__ import annotations

import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class Served:
    proc: subprocess.Popen
    http: str  # http://host:port
    zmq: str  # the verifier's client endpoint
    health_before_ready: int  # /health's status as soon as HTTP listened


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"serve exited with code {proc.wait()} before it was ready")
            return line
    raise TimeoutError("serve printed no ready line in time")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def start_http_serve(target: str, *flags: str, timeout_s: float = 180) -> Served:
    cmd = [sys.executable, "-m", "ouroboros.cli", "serve", "--target", target, "--port", "0", "--http", "0",
           "--ready-timeout", "120", "--draft-timeout", "0.5", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    http = re.search(r"HTTP on (http://\S+)/v1", _read_line(proc, deadline)).group(1)
    health = _status(http + "/health")  # the models are still loading in their processes
    zmq = re.search(r"serving on (\S+)", _read_line(proc, deadline)).group(1)
    return Served(proc, http, zmq, health)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
