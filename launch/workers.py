"""The two process entry points: `ouroboros verifier` and `ouroboros drafter`."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import zmq

from launch import config as cfg


REFUSED_EXIT_CODE = 3  # a drafter the verifier refused: restarting it cannot help


def add_worker_parsers(sub) -> None:
    ver = sub.add_parser("verifier", help="run the verifier process (target model, client front door)")
    ver.add_argument("--bind", required=True, help="client endpoint to bind, e.g. tcp://127.0.0.1:5555")
    ver.add_argument("--drafter-bind", required=True, help="endpoint the drafter connects to")
    ver.add_argument("--device", default="cpu")
    ver.add_argument("--threads", type=int, default=1)
    ver.add_argument("--solo-threads", type=int, default=None,
                     help="torch threads while the drafter rests on every request (default --threads)")
    ver.add_argument("--takes-turns", action="store_true",
                     help="the drafter drafts only while this verifier waits (--pre-drafts off): a pass with every "
                          "wanted draft in hand runs on --solo-threads")
    ver.add_argument("--ready-timeout", type=float, default=600.0,
                     help="seconds to wait for the drafter's handshake before serving alone")
    cfg.add_model_flags(ver)
    cfg.add_security_flags(ver)
    cfg.add_verifier_flags(ver)

    dra = sub.add_parser("drafter", help="run the drafter process (draft model)")
    dra.add_argument("--connect", required=True, help="the verifier's drafter endpoint")
    dra.add_argument("--device", default="cpu")
    dra.add_argument("--threads", type=int, default=1)
    dra.add_argument("--pool-file", default=None, help="phrase pool to load at start and save at exit")
    dra.add_argument("--max-sessions", type=int, default=16, help="requests drafted at once (sizes the KV slots)")
    cfg.add_model_flags(dra)
    cfg.add_security_flags(dra)
    cfg.add_algorithm_flags(dra)


def _stop_on_signals(server) -> None:
    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        server.is_running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _log_to_stderr(role: str) -> None:
    """INFO by default; OUROBOROS_LOG_LEVEL=DEBUG adds every pass and its time (ms since start)."""
    level = cfg.log_level()
    detailed = level == "DEBUG"
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=f"[{role}] %(relativeCreated)d %(message)s" if detailed else f"[{role}] %(message)s")


def _capture_graphs(engine, max_rows: int) -> None:
    """On CUDA: capture the common pass shapes (up to `max_rows` rows, the process's batch limit)
    now, so no early request pays for them."""
    # here, not at the top: each process loads only its own role's engine, and torch with it
    from kvcache.graphs import MAX_TOKENS, MAX_WIDTH

    if engine.graphs is None:
        return
    start = time.perf_counter()
    engine.graphs.capture_common(max_rows=max_rows)
    logging.info("CUDA graphs on: %d common pass shapes captured at start-up in %.1f s; passes of up to %d "
                 "tokens a row and %d in all are captured at other shapes on first use (--no-cuda-graphs runs "
                 "them eagerly)", engine.graphs.num_captured, time.perf_counter() - start, MAX_WIDTH, MAX_TOKENS)


def run_verifier(args: argparse.Namespace) -> int:
    # here, not at the top: a verifier process loads only the verifier's engine, and torch with it
    import torch

    from models.loading import for_engine, load_model, load_tokenizer, tokenizer_fingerprint
    from verifier.engine import TargetEngine
    from verifier.server import VerifierServer

    _log_to_stderr("verifier")
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.target)
    config = cfg.verifier_config(args, tokenizer.eos_token_id)
    model = for_engine(load_model(args.target, args.device, args.dtype), packed=not args.no_packed_weights)
    engine = TargetEngine(model, config.max_sessions, args.max_len, cuda_graphs=not args.no_cuda_graphs)
    slots = engine.slots
    logging.info("KV slots: %d x %d tokens, %.0f MiB at most (--max-sessions, --max-len)", slots.num_slots,
                 slots.max_len, slots.nbytes / 2**20)
    _capture_graphs(engine, config.max_batch)
    server = VerifierServer(engine, tokenizer, config, args.bind, args.drafter_bind, args.curve_keys,
                            tokenizer_fingerprint(tokenizer), args.threads, args.solo_threads or args.threads,
                            takes_turns=args.takes_turns)
    _stop_on_signals(server)
    endpoint = server.clients.getsockopt(zmq.LAST_ENDPOINT).decode()
    logging.info("waiting up to %.0f s for a drafter (--ready-timeout)", args.ready_timeout)
    is_ready = server.wait_for_drafter(args.ready_timeout)
    if not server.is_running:  # SIGTERM or SIGINT while waiting for the drafter
        return 0
    if not is_ready:
        logging.warning("no drafter after %.0f s (--ready-timeout): serving with the target alone", args.ready_timeout)
    print(f"READY {endpoint} kv_slots={slots.num_slots} max_len={slots.max_len} kv_bytes={slots.nbytes}", flush=True)
    server.serve_loop()
    return 0


def run_drafter(args: argparse.Namespace) -> int:
    # here, not at the top: a drafter process loads only the drafter's engine, and torch with it
    import torch

    from drafter.engine import DraftEngine
    from drafter.pool import PhrasePool
    from drafter.server import DrafterServer
    from models.loading import draft_tokenizer, for_engine, load_draft, tokenizer_fingerprint

    _log_to_stderr("drafter")
    torch.set_num_threads(args.threads)
    drafter_config = cfg.drafter_config(args)
    draft = load_draft(args.draft, args.target, args.device, args.dtype)  # of the target, only what the draft needs
    for_engine(draft, packed=not args.no_packed_weights)
    pool = PhrasePool.load(args.pool_file) if args.pool_file and os.path.exists(args.pool_file) else None
    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    engine = DraftEngine(draft, drafter_config, pool, args.max_sessions, args.max_len,
                         cuda_graphs=not args.no_cuda_graphs)
    _capture_graphs(engine, drafter_config.max_batch)
    fingerprint = tokenizer_fingerprint(draft_tokenizer(args.draft, args.target))
    server = DrafterServer(engine, args.connect, fingerprint, int(draft.config.vocab_size), args.curve_keys)
    _stop_on_signals(server)
    try:
        server.serve_loop()
    finally:
        if args.pool_file:
            engine.pool.save(args.pool_file)
    if server.refusal is not None:
        print(f"ouroboros: error: {server.refusal}", file=sys.stderr, flush=True)
        return REFUSED_EXIT_CODE
    return 0

