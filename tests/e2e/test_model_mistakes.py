"""What a user gets for the usual mistakes with their own model pair: one line naming the flag
or the reason, a non-zero exit code, and no wait for a timeout."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.families import make_tokenizer, save_pair

GUARD_S = 120  # a hang guard only: each case below ends in seconds


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    """A llama pair, the same draft with a tokenizer whose ids mean other text, and a directory
    that has a config.json but no model."""
    root = tmp_path_factory.mktemp("mistakes")
    target, draft = save_pair(root, "llama", make_tokenizer())
    swapped = root / "swapped"
    subprocess.run(["cp", "-r", draft, str(swapped)], check=True)
    make_tokenizer(swap=True).save_pretrained(swapped)
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    return {"target": target, "draft": draft, "swapped": str(swapped), "broken": str(broken)}


def ouroboros(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "ouroboros.cli", *argv], capture_output=True, text=True,
                          timeout=GUARD_S, env=env)


def error_line(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    return [line for line in run.stderr.splitlines() if line.startswith("ouroboros: error:")][-1]


def test_a_nonexistent_path_is_named_with_its_flag(pair_dirs):
    run = ouroboros("generate", "hi", "--target", pair_dirs["target"], "--draft", "/nonexistent/draft")
    assert run.returncode == 2
    assert error_line(run) == "ouroboros: error: --draft /nonexistent/draft: no such directory"
    run = ouroboros("serve", "--target", "./no/such/target", "--draft", pair_dirs["draft"])
    assert run.returncode == 2 and "--target ./no/such/target: no such directory" in error_line(run)


def test_a_custom_target_needs_a_draft(pair_dirs):
    run = ouroboros("generate", "hi", "--target", pair_dirs["target"])
    assert run.returncode == 2 and "--draft is required" in error_line(run)


def test_the_target_alone_needs_no_draft(pair_dirs):
    run = ouroboros("generate", "def add(a, b):", "--target-only", "--target", pair_dirs["target"],
                    "--max-new-tokens", "8")
    assert run.returncode == 0, run.stderr
    assert "--- 8 tokens" in run.stderr


def test_a_drafter_that_dies_before_ready_stops_generate_with_its_error(pair_dirs):
    run = ouroboros("generate", "hi", "--target", pair_dirs["target"], "--draft", pair_dirs["broken"])
    assert run.returncode == 2
    assert "the drafter exited with code" in error_line(run) and "before the pipeline was ready" in error_line(run)


def test_a_refused_drafter_makes_the_launcher_exit_with_the_reason(pair_dirs):
    run = ouroboros("generate", "hi", "--target", pair_dirs["target"], "--draft", pair_dirs["swapped"])
    assert run.returncode == 2
    line = error_line(run)
    assert "refused this drafter" in line and "tokenizer differs from the target's" in line
    in_process = ouroboros("generate", "hi", "--in-process", "--target", pair_dirs["target"],
                           "--draft", pair_dirs["swapped"])
    assert in_process.returncode == 2 and "tokenizer differs from the target's" in error_line(in_process)


@pytest.mark.parametrize("mode", ["--target-only", "--in-process", "--spawn"])
def test_the_context_limit_is_checked_at_admission_in_every_mode(pair_dirs, mode):
    """The tiny target's context is 512 tokens: prompt + max_new_tokens over it is refused."""
    run = ouroboros("generate", "def add(a, b):", mode, "--target", pair_dirs["target"], "--draft",
                    pair_dirs["draft"], "--max-new-tokens", "510")
    assert run.returncode == 2
    assert "plus max_new_tokens (510) is over the max context of 512 tokens" in error_line(run)


def wait_for_line(proc: subprocess.Popen, needle: str) -> None:
    deadline = time.monotonic() + GUARD_S
    for line in proc.stderr:
        if needle in line or time.monotonic() > deadline:
            return
    raise AssertionError(f"the process ended before printing {needle!r}")


@pytest.mark.parametrize("role", ["verifier", "drafter"])
def test_a_process_waiting_for_its_peer_ends_on_sigterm(pair_dirs, tmp_path, role):
    peer = f"ipc://{tmp_path}/peer.sock"
    argv = (["verifier", "--bind", "tcp://127.0.0.1:0", "--drafter-bind", peer] if role == "verifier"
            else ["drafter", "--connect", peer])
    proc = subprocess.Popen([sys.executable, "-m", "ouroboros.cli", *argv, "--target", pair_dirs["target"],
                             "--draft", pair_dirs["draft"]], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, "waiting up to" if role == "verifier" else "saying Hello")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
