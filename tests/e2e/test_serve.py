"""`ouroboros serve` as a user runs it: ready line, Ctrl-C, a crashed verifier."""
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from protocol import Client, ServerTimeout


def start_serve(target: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "ouroboros.cli", "serve", "--target", target, "--draft", "layers:0",
           "--port", "0", "--ready-timeout", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"serving on (\S+)", line)
    assert match, f"no ready line, got {line!r}"
    return proc, match.group(1)


def children_of(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def test_ctrl_c_stops_both_processes_and_leaves_no_orphans(tiny_dirs):
    proc, endpoint = start_serve(tiny_dirs["target"])
    children = children_of(proc)
    assert len(children) == 2
    with Client(endpoint, timeout=60) as client:
        assert len(client.generate("def add(a, b):", max_new_tokens=8).token_ids) == 8
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_crashed_verifier_stops_serve_nonzero_and_clients_get_a_typed_error(tiny_dirs):
    proc, endpoint = start_serve(tiny_dirs["target"])
    children = children_of(proc)
    verifier = next(c for c in children if "verifier" in c.cmdline())
    verifier.kill()
    assert proc.wait(timeout=30) != 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    start = time.monotonic()
    with Client(endpoint, timeout=1.0) as client, pytest.raises(ServerTimeout):
        client.generate("def add(a, b):", max_new_tokens=8)
    assert time.monotonic() - start < 5
