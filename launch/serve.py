"""`ouroboros serve`: start the verifier and drafter processes here and supervise them."""
from __future__ import annotations

import argparse
import ctypes
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

from launch import config as cfg
from launch.http_door import add_http_flags, check_http_flags, start_http_door
from launch.workers import REFUSED_EXIT_CODE
from protocol.sockets import bind_address, warn_if_public


def add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="start the two-process pipeline on this machine",
                           epilog="with --verifier vllm, flags after `--` go to vLLM's OpenAI server")
    add_serve_flags(serve)
    add_http_flags(serve, "--http")
    serve.add_argument("--verifier", choices=["ours", "vllm"], default="ours",
                       help="who verifies: our verifier process, or vLLM's OpenAI server (needs --http; "
                            "`make install-vllm`) with our drafter as its proposer")
    serve.add_argument("--drafter-metrics", type=int, default=None, metavar="PORT",
                       help="with --verifier vllm: our drafter's counters (its presence, restarts, pre-draft hits, "
                            "draft waits) at http://--http-host:PORT/metrics, beside vLLM's own /metrics")
    serve.add_argument("--drafter-bind", default=None, metavar="ENDPOINT",
                       help="with --verifier vllm: where vLLM's worker listens for our drafter, e.g. "
                            "tcp://0.0.0.0:5600 (default a free port on 127.0.0.1; off this machine use --curve-keys)")
    serve.add_argument("--remote-drafter", action="store_true",
                       help="with --verifier vllm: start no drafter here; one elsewhere runs `ouroboros drafter "
                            "--connect tcp://THIS-HOST:PORT [--curve-keys DIR]` to --drafter-bind's port")
    serve.add_argument("--vllm-python", default=None,
                       help="the interpreter of vLLM's venv (default $OUROBOROS_VLLM_PYTHON, else .venv-vllm/bin/python)")
    serve.set_defaults(vllm_args=[])


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface for clients (default loopback only)")
    parser.add_argument("--port", type=int, default=5555, help="client port (0 = any free port)")
    parser.add_argument("--bind", default=None, help="client endpoint instead of --host/--port, e.g. ipc:///tmp/o.sock")
    parser.add_argument("--target-device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--draft-device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--threads-per-process", type=int, default=1, help="torch threads for each process")
    parser.add_argument("--verifier-threads", type=int, default=None,
                        help="torch threads for the verifier (default --threads-per-process)")
    parser.add_argument("--drafter-threads", type=int, default=None,
                        help="torch threads for the drafter (default --threads-per-process)")
    parser.add_argument("--solo-threads", type=int, default=None,
                        help="torch threads for the verifier while the drafter rests on every request (default: "
                             "the verifier's and the drafter's together when both run on this machine's CPU)")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for both models")
    parser.add_argument("--pool-file", default=None, help="phrase pool kept across drafter restarts")
    cfg.add_security_flags(parser)
    cfg.add_model_flags(parser)
    cfg.add_algorithm_flags(parser)
    cfg.add_verifier_flags(parser)


def _die_with_parent() -> None:
    """Children get SIGTERM if serve itself dies, so no process is orphaned (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _threads(args: argparse.Namespace, role_flag: str) -> int:
    """A role's torch threads: its own flag, else --threads-per-process (>= 1)."""
    threads = getattr(args, role_flag, None) or args.threads_per_process
    if threads < 1:
        raise ValueError(f"--{role_flag.replace('_', '-')} / --threads-per-process must be >= 1, got {threads}")
    return threads


def solo_threads(args: argparse.Namespace, shares_cpu: bool) -> int:
    """The verifier's threads while the drafter rests (no request waits for a draft): --solo-threads, else the
    cores the two processes hold together when they share this CPU, else the verifier's own."""
    verifier = _threads(args, "verifier_threads")
    threads = getattr(args, "solo_threads", None) or (verifier + _threads(args, "drafter_threads") if shares_cpu
                                                       else verifier)
    if threads < 1:
        raise ValueError(f"--solo-threads must be >= 1, got {threads}")
    return threads


def takes_turns(args: argparse.Namespace, shares_cpu: bool) -> bool:
    """--pre-drafts off, or auto where both processes share this CPU: the drafter drafts only while
    the verifier waits, and the verifier's passes take the drafter's cores too."""
    mode = getattr(args, "pre_drafts", "auto")
    return mode == "off" or (mode == "auto" and shares_cpu)


class StderrRelay:
    """Copies a child's stderr to ours line by line and keeps its last lines, so a child that
    dies can be reported with its own error."""

    def __init__(self, stream) -> None:
        self.lines: deque[str] = deque(maxlen=40)
        threading.Thread(target=self._relay, args=(stream,), daemon=True).start()

    def _relay(self, stream) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            self.lines.append(line.rstrip())
            sys.stderr.write(line)
            sys.stderr.flush()

    def last_error(self) -> str:
        """Its `ouroboros: error:` line, else its last line (a traceback's last line names the error)."""
        lines = [line for line in self.lines if line.strip()]
        for line in reversed(lines):
            if line.startswith("ouroboros: error:"):
                return line.removeprefix("ouroboros: error:").strip()
        return lines[-1].strip() if lines else "(it printed nothing)"


class LocalPipeline:
    """Both processes of the pipeline as children of this one; restarts a crashed drafter."""

    def __init__(self, args: argparse.Namespace) -> None:
        cfg.resolve_model_flags(args)  # parsed args may come from code, not only from main
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="ouroboros-")
        self.drafter_endpoint = f"ipc://{self.workdir}/drafter.sock"
        self.endpoint: str | None = None
        self.verifier: subprocess.Popen | None = None
        self.drafter: subprocess.Popen | None = None
        self.num_drafter_restarts = 0
        self.stderr: dict[str, StderrRelay] = {}
        self.verifier_facts: dict[str, str] = {}  # from its READY line: kv_slots, max_len, kv_bytes

    def _common(self) -> list[str]:
        a = self.args
        keys = getattr(a, "curve_keys", None)
        return cfg.model_argv(a) + (["--curve-keys", keys] if keys else [])

    def _spawn(self, role_args: list[str], stdout=None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "launch.cli", *role_args]
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        self.stderr[role_args[0]] = StderrRelay(proc.stderr)
        return proc

    def _exited_before_ready(self, role: str, proc: subprocess.Popen) -> RuntimeError:
        proc.wait()
        time.sleep(0.2)  # let the relay take its last lines
        self.stop()
        return RuntimeError(f"the {role} exited with code {proc.returncode} before the pipeline was ready: "
                            f"{self.stderr[role].last_error()}")

    def start_drafter(self) -> None:
        a = self.args
        role = ["drafter", "--connect", self.drafter_endpoint, "--device", a.draft_device,
                "--max-sessions", str(a.max_sessions),
                "--threads", str(_threads(a, "drafter_threads")), *self._common(), *cfg.algorithm_argv(a)]
        if a.pool_file:
            role += ["--pool-file", a.pool_file]
        self.drafter = self._spawn(role)

    def start(self) -> str:
        """Start both processes; returns the client endpoint once the handshake is done."""
        a = self.args
        warning = warn_if_public(a.host, is_authenticated=bool(getattr(a, "curve_keys", None)))
        if warning:
            print(f"ouroboros: warning: {warning}", file=sys.stderr)
        client_endpoint = a.bind or bind_address(a.host, a.port)
        shares_cpu = a.target_device == a.draft_device == "cpu"
        a.pre_drafts = "off" if takes_turns(a, shares_cpu) else "on"  # the drafter's argv carries it
        role = ["verifier", "--bind", client_endpoint, "--drafter-bind", self.drafter_endpoint,
                "--device", a.target_device, "--threads", str(_threads(a, "verifier_threads")),
                "--solo-threads", str(solo_threads(a, shares_cpu)),
                "--ready-timeout", str(a.ready_timeout), *self._common(), *cfg.verifier_argv(a),
                *(["--takes-turns"] if a.pre_drafts == "off" else [])]
        self.verifier = self._spawn(role, stdout=subprocess.PIPE)
        self.start_drafter()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line.decode()) for line in self.verifier.stdout],
                         daemon=True).start()
        deadline = time.monotonic() + a.ready_timeout + 30
        while time.monotonic() < deadline:
            for role, proc in (("verifier", self.verifier), ("drafter", self.drafter)):
                if proc.poll() is not None:
                    raise self._exited_before_ready(role, proc)
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("READY "):  # READY ENDPOINT key=value ...
                self.endpoint, *facts = line.split()[1:]
                self.verifier_facts = dict(fact.split("=", 1) for fact in facts)
                return self.endpoint
        self.stop()
        raise RuntimeError(f"the pipeline was not ready within {a.ready_timeout:.0f} s (--ready-timeout)")

    def check(self) -> int | None:
        """Supervise once: restart a dead drafter; the verifier's exit code if it died."""
        if self.verifier is not None and self.verifier.poll() is not None:
            return self.verifier.returncode or 1
        if self.drafter is not None and self.drafter.poll() is not None:
            if self.drafter.returncode == REFUSED_EXIT_CODE:
                print("ouroboros: the verifier refused the drafter; decoding with the target alone", file=sys.stderr)
                self.drafter = None
                return None
            print(f"ouroboros: drafter exited ({self.drafter.returncode}); restarting it", file=sys.stderr)
            self.num_drafter_restarts += 1
            self.start_drafter()
        return None

    def stop(self) -> None:
        """SIGTERM both, then SIGKILL what is still there after 10 s; then remove the folder of
        the drafter's socket."""
        procs = [p for p in (self.drafter, self.verifier) if p is not None and p.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalPipeline":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def run_serve(args: argparse.Namespace) -> int:
    if args.verifier == "vllm":
        # here, not at the top: the vLLM door's code loads only for --verifier vllm
        from launch.vllm_serve import run_vllm_serve

        return run_vllm_serve(args)
    if args.vllm_args:
        raise ValueError("flags after `--` go to vLLM: they need --verifier vllm")
    if args.drafter_metrics is not None:
        raise ValueError("--drafter-metrics is for --verifier vllm: our own HTTP door's /metrics has these counters")
    if args.drafter_bind is not None or args.remote_drafter:
        raise ValueError("--drafter-bind and --remote-drafter are for --verifier vllm (our verifier's drafter link is "
                         "`ouroboros verifier --drafter-bind`)")
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_requested.set())
    check_http_flags(args.http, args.http_host, args.api_key)
    door, http_server = None, None
    if args.http is not None:
        door, http_server = start_http_door(args.target, args.http, args.http_host, args.api_key, args.curve_keys)
    pipeline = LocalPipeline(args)
    try:
        endpoint = pipeline.start()
    except BaseException:
        if http_server is not None:
            http_server.should_exit = True
        raise
    if door is not None:
        door.endpoint = endpoint
    facts = pipeline.verifier_facts
    memory = (f"; target KV slots: {facts['kv_slots']} x {facts['max_len']} tokens, "
              f"{int(facts['kv_bytes']) / 2**30:.2f} GiB at most") if "kv_bytes" in facts else ""
    print(f"ouroboros: serving on {endpoint} (Ctrl-C to stop{memory})", flush=True)
    code = 0
    while not stop_requested.is_set():
        verifier_code = pipeline.check()
        if verifier_code is not None:
            print(f"ouroboros: the verifier exited with code {verifier_code}; stopping", file=sys.stderr)
            code = verifier_code
            break
        stop_requested.wait(0.2)
    if http_server is not None:
        http_server.should_exit = True
    pipeline.stop()
    return code
