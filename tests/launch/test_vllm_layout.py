"""Where `serve --verifier vllm` puts things: which of vLLM's workers links to our drafter, the
endpoint the drafter reaches (here or on another machine, with CURVE), vLLM's parallel flags and
its CPU workers' cores; each refusal one line before anything loads."""
from __future__ import annotations

import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from launch.vllm_serve import core_lists, drafter_command, drafter_endpoints, parallel_sizes, shared_gpu
from ouroboros.cli import build_parser
from protocol.curve import create_keys
from verifier.vllm_proposer import ENDPOINT_ENV, FINGERPRINT_ENV, OuroborosProposer, is_output_rank


def parallel(rank: int, world: int, tp: int, dp: int = 1) -> SimpleNamespace:
    return SimpleNamespace(rank=rank, world_size=world, tensor_parallel_size=tp, prefill_context_parallel_size=1,
                           data_parallel_size=dp)


@pytest.mark.parametrize("tp,pp,output", [(1, 1, 0), (3, 1, 0), (2, 2, 2), (4, 2, 4), (1, 4, 3)])
def test_one_worker_links_the_first_tensor_rank_of_the_last_stage(tp, pp, output):
    """vLLM takes drafts from rank world - TP (its multiproc executor's output rank) only."""
    world = tp * pp
    assert [r for r in range(world) if is_output_rank(parallel(r, world, tp))] == [output]


def fake_vllm_config(rank: int, world: int, tp: int, dp: int = 1) -> SimpleNamespace:
    return SimpleNamespace(parallel_config=parallel(rank, world, tp, dp),
                           speculative_config=SimpleNamespace(num_speculative_tokens=4),
                           model_config=SimpleNamespace(get_vocab_size=lambda: 96, max_model_len=256))


def test_the_other_workers_return_empty_drafts_and_bind_nothing(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(ENDPOINT_ENV, f"tcp://127.0.0.1:{port}")
    monkeypatch.setenv(FINGERPRINT_ENV, "x")
    others = [OuroborosProposer(fake_vllm_config(rank, 3, 3)) for rank in (1, 2)]
    assert all(p.door is None for p in others)
    assert others[0].propose([[5], [6]], None, None) == [[], []]
    linked = OuroborosProposer(fake_vllm_config(0, 3, 3))  # the port is still free: it binds
    try:
        assert linked.door is not None and linked.door.endpoint.endswith(f":{port}")
    finally:
        linked.close()
    with pytest.raises(RuntimeError, match="data-parallel"):
        OuroborosProposer(fake_vllm_config(0, 1, 1, dp=2))


def test_vllm_parallel_flags_are_read_and_pipeline_and_data_parallel_refused():
    assert parallel_sizes(["--max-num-seqs", "8"]) == {"tensor": 1, "pipeline": 1, "data": 1}
    assert parallel_sizes(["-tp", "3"])["tensor"] == 3
    assert parallel_sizes(["--tensor-parallel-size=4", "--enforce-eager"])["tensor"] == 4
    for bad in (["-pp", "2"], ["--data-parallel-size", "2"], ["-tp", "zero"], ["--tensor-parallel-size"]):
        with pytest.raises(ValueError):
            parallel_sizes(bad)


def test_each_cpu_worker_gets_its_own_cores_where_there_are_enough():
    assert core_lists(2, 1) == "0-1"
    assert core_lists(16, 4) == "0-3|4-7|8-11|12-15"
    assert core_lists(2, 3) == "0|1|0"


def test_a_drafter_on_one_of_vllms_gpus_is_warned_of():
    assert shared_gpu("cuda:2", 2) is None and shared_gpu("cpu", 4) is None
    assert "cuda:2 for its own" in shared_gpu("cuda:1", 2) and shared_gpu("cuda", 1)


def serve_args(*flags: str):
    return build_parser().parse_args(["serve", "--verifier", "vllm", "--http", "8000", *flags])


def test_the_drafter_endpoint_defaults_to_loopback_and_a_taken_port_is_one_line():
    bind, connect = drafter_endpoints(serve_args())
    assert bind == connect and bind.startswith("tcp://127.0.0.1:")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match="cannot bind there"):
            drafter_endpoints(serve_args("--drafter-bind", f"tcp://127.0.0.1:{taken.getsockname()[1]}"))
    for bad in ("tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://:5600"):
        with pytest.raises(ValueError, match="--drafter-bind"):
            drafter_endpoints(serve_args("--drafter-bind", bad))
    with pytest.raises(ValueError, match="--remote-drafter"):
        drafter_endpoints(serve_args("--remote-drafter"))


def test_all_interfaces_are_reached_on_loopback_here_and_the_local_drafter_gets_the_keys(tmp_path):
    keys = str(create_keys(tmp_path / "keys"))
    args = serve_args("--drafter-bind", "tcp://0.0.0.0:0", "--curve-keys", keys)
    with pytest.raises(ValueError):  # port 0 cannot be reached by a drafter elsewhere
        drafter_endpoints(args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = serve_args("--drafter-bind", f"tcp://0.0.0.0:{port}", "--curve-keys", keys)
    assert drafter_endpoints(args) == (f"tcp://0.0.0.0:{port}", f"tcp://127.0.0.1:{port}")
    command = drafter_command(args, f"tcp://127.0.0.1:{port}")
    assert build_parser().parse_args(command[command.index("drafter"):]).curve_keys == keys


@pytest.mark.parametrize("flags,says", [
    (["--", "--pipeline-parallel-size", "2"], "--pipeline-parallel-size 2"),
    (["--remote-drafter"], "--remote-drafter"),
    (["--drafter-bind", "tcp://0.0.0.0:5601", "--curve-keys", "/nonexistent/keys"], "no CURVE key"),
])
def test_bad_layouts_fail_in_one_line_before_vllm_starts(flags, says):
    run = subprocess.run([sys.executable, "-m", "ouroboros.cli", "serve", "--verifier", "vllm", "--http", "8000",
                          "--vllm-python", sys.executable, *flags], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and says in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_the_drafter_flags_belong_to_the_vllm_door():
    run = subprocess.run([sys.executable, "-m", "ouroboros.cli", "serve", "--remote-drafter"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "--verifier vllm" in run.stderr
