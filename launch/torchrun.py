"""torchrun entry: `torchrun --nproc-per-node 2 -m launch.torchrun [serve flags]`.

Rank 0 is the verifier (local GPU 0), rank 1 the drafter (local GPU 1); on a machine without
GPUs both run on the CPU with gloo. The drafter endpoint is exchanged through torchrun's own
rendezvous store, so `--nnodes 2` puts the drafter on another node with no extra flags."""
from __future__ import annotations

import argparse
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from launch import config as cfg
from launch.cli import build_parser
from launch.serve import solo_threads, takes_turns
from launch.workers import run_drafter, run_verifier
from protocol.sockets import is_loopback

ENDPOINT_KEY = "ouroboros/drafter_endpoint"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _drafter_host(env: cfg.TorchrunEnv) -> str:
    """Loopback when both ranks share the node; else this node's address, as others see it."""
    if env.local_world == env.world:
        return "127.0.0.1"
    host = env.drafter_host or socket.gethostbyname(socket.gethostname())
    if is_loopback(host):
        host = env.master_addr
    print(f"ouroboros: warning: the drafter link listens on {host}, reachable from other nodes",
          file=sys.stderr)
    return host


def main(argv: list[str] | None = None) -> int:
    serve_args = build_parser().parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    cfg.resolve_model_flags(serve_args)
    env = cfg.torchrun_env()
    rank, world, local_rank = env.rank, env.world, env.local_rank
    if world != 2:
        raise SystemExit(f"launch.torchrun needs exactly 2 processes (verifier + drafter), got {world}")
    has_gpu = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if has_gpu else "cpu"
    dist.init_process_group(backend="nccl" if has_gpu else "gloo", timeout=timedelta(minutes=10))
    store = dist.TCPStore(env.master_addr, env.master_port, world,
                          is_master=False, timeout=timedelta(seconds=serve_args.ready_timeout))

    def role(**settings) -> argparse.Namespace:  # serve's parsed flags, and this role's own
        return argparse.Namespace(**(vars(serve_args) | {"device": device} | settings))

    shares_cpu = not has_gpu and env.local_world == world
    serve_args.pre_drafts = "off" if takes_turns(serve_args, shares_cpu) else "on"
    if rank == 0:
        host = _drafter_host(env)
        endpoint = f"tcp://{host}:{_free_port(host)}"
        store.set(ENDPOINT_KEY, endpoint)
        client = serve_args.bind or f"tcp://{serve_args.host}:{serve_args.port or '*'}"
        threads = serve_args.verifier_threads or serve_args.threads_per_process
        return run_verifier(role(bind=client, drafter_bind=endpoint, threads=threads,
                                 solo_threads=solo_threads(serve_args, shares_cpu),
                                 takes_turns=serve_args.pre_drafts == "off"))
    endpoint = store.get(ENDPOINT_KEY).decode()
    args = role(connect=endpoint, threads=serve_args.drafter_threads or serve_args.threads_per_process)
    return run_drafter(args)


if __name__ == "__main__":
    sys.exit(main())
