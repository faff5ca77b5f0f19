"""`ouroboros stress` end to end: concurrent clients, the drafter killed mid-load, all checked."""
import json
import subprocess
import sys


def test_stress_with_drafter_killed_loses_nothing(tiny_dirs, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["def add(a, b):", "Once upon a time", "import os\n", "class Stack:"]))
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "ouroboros.cli", "stress", "--spawn", "--target", tiny_dirs["target"],
           "--draft", "layers:0", "--clients", "4", "--requests", "96", "--max-new-tokens", "96",
           "--prompts", str(prompts), "--kill-drafter-after", "1.5", "--draft-timeout", "0.5", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"requests", "completed", "failed", "mismatched", "throughput_tokens_per_s", "latency_p50_s",
            "latency_p99_s", "ttft_p50_s", "ttft_p99_s", "drafter_restarts"} <= set(report)
    assert (report["requests"], report["completed"], report["failed"], report["mismatched"]) == (96, 96, 0, 0)
    assert report["drafter_restarts"] == 1
    # the restarted drafter's handshake, as the verifier reports it, came after the kill
    assert report["target_alone_s"] is not None and 0 < report["target_alone_s"] < 60
    assert report["throughput_tokens_per_s"] > 0 and report["latency_p99_s"] >= report["latency_p50_s"]
