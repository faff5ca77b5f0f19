"""`torchrun --nproc-per-node 2 -m launch.torchrun` on the CPU serves a request."""
import queue
import signal
import subprocess
import sys
import threading

from protocol.client import Client


def test_torchrun_two_ranks_on_cpu_serve_a_request(tiny_dirs):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "launch.torchrun", "--target", tiny_dirs["target"], "--draft", "layers:0", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        endpoint = None
        while endpoint is None:
            line = lines.get(timeout=180)
            if "READY " in line:
                endpoint = line.split("READY ", 1)[1].split()[0]
        with Client(endpoint, timeout=60) as client:
            completion = client.generate("def add(a, b):", max_new_tokens=24)
        assert len(completion.token_ids) == 24
        assert completion.metrics["accepted_tokens"] > 0  # the drafter rank took part
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
            ended_on_sigterm = True
        except subprocess.TimeoutExpired:
            proc.kill()
            ended_on_sigterm = False
    assert ended_on_sigterm, "torchrun and its two ranks did not end within 30 s of SIGTERM"
