"""`ouroboros stress`: many concurrent clients, every output checked against the target alone."""
from __future__ import annotations

import re
import subprocess
import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from bench.run import load_prompts
from launch.reference import target_alone
from launch.sequential import engine_alone
from launch.serve import LocalPipeline
from models.loading import for_engine, load_model, load_tokenizer
from protocol.async_client import AsyncClient
from verifier.engine import TargetEngine


@dataclass
class Record:
    is_ok: bool = False
    is_mismatch: bool = False
    error: str = ""
    num_tokens: int = 0
    started: float = 0.0
    first_token: float | None = None
    finished: float = 0.0
    drafter_since: float | None = None  # when the drafter serving it had connected (verifier's clock)


@dataclass
class KillState:
    killed_at: float | None = None
    back_at: float | None = None
    records: list = field(default_factory=list)


def references(args: argparse.Namespace, prompts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and what the pipeline must answer for each, computed first, in-process: the
    target alone (HF greedy) in float32, our engine without drafts in other dtypes (README: what
    identical means)."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tokenizer, model = load_tokenizer(args.target), load_model(args.target, "cpu", args.dtype)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    engine = None if args.dtype == "float32" else \
        TargetEngine(for_engine(model, packed=not args.no_packed_weights), max_sessions=1)
    return ids, [target_alone(model, i, args.max_new_tokens, stops) if engine is None else
                 engine_alone(engine, i, args.max_new_tokens, stops) for i in tqdm(ids, desc="references", file=sys.stderr)]


async def one_request(client, ids: list[int], expected: list[int], max_new: int, record: Record) -> None:
    record.started = time.monotonic()
    try:
        stream = client.stream(ids, max_new_tokens=max_new)
        tokens: list[int] = []
        async for chunk in stream:
            if record.first_token is None:
                record.first_token = time.monotonic()
            tokens += chunk.token_ids
        record.finished = time.monotonic()
        record.num_tokens = len(tokens)
        record.is_ok = tokens == expected
        record.is_mismatch = not record.is_ok
        metrics = stream.completion.metrics
        uptime = metrics.get("drafter_uptime_s", -1.0)
        record.drafter_since = record.finished - uptime if uptime >= 0 else None
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
        record.finished = time.monotonic()
        record.error = f"{type(exc).__name__}: {exc}"


class ZmqDoor:
    name = "zmq"

    def __init__(self, endpoint: str, args: argparse.Namespace) -> None:
        self.endpoint, self.args = endpoint, args

    def session(self):
        return AsyncClient(self.endpoint, timeout=self.args.timeout, curve_keys=self.args.curve_keys)

    async def request(self, client, ids: list[int], expected: list[int], record: Record) -> None:
        await one_request(client, ids, expected, self.args.max_new_tokens, record)


class HttpDoorClients:
    """The same requests through the OpenAI HTTP door, with the official openai client."""

    name = "http"

    def __init__(self, url: str, args: argparse.Namespace, decode) -> None:
        self.url, self.args, self.decode = url, args, decode

    def session(self):
        # the openai client is optional: needed only with --http
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=self.args.timeout)

    async def request(self, api, ids: list[int], expected: list[int], record: Record) -> None:
        record.started = time.monotonic()
        try:
            stream = await api.completions.create(model=self.args.target, prompt=ids, max_tokens=self.args.max_new_tokens,
                                                  temperature=0, stream=True, stream_options={"include_usage": True})
            texts, usage = [], None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    record.first_token = record.first_token or time.monotonic()
                    texts.append(chunk.choices[0].text)
                usage = chunk.usage or usage
            record.finished = time.monotonic()
            record.num_tokens = usage.completion_tokens
            record.is_ok = "".join(texts) == self.decode(expected) and usage.completion_tokens == len(expected)
            record.is_mismatch = not record.is_ok
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            record.finished = time.monotonic()
            record.error = f"{type(exc).__name__}: {exc}"


def start_door_process(args: argparse.Namespace, endpoint: str):
    """`ouroboros http-door` in its own process, as a user would run it: (process, base url)."""
    cmd = [sys.executable, "-m", "launch.cli", "http-door", "--connect", endpoint, "--target", args.target,
           "--port", "0", "--timeout", str(args.timeout)]
    cmd += ["--curve-keys", args.curve_keys] if args.curve_keys else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"HTTP on (http://\S+)/v1", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the HTTP door did not start (exit code {proc.wait()})")
    return proc, match.group(1)


async def drive(door, args: argparse.Namespace, ids, outs, pipeline) -> tuple[list[Record], KillState, float]:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        jobs.put_nowait(i)
    records = [Record() for _ in range(args.requests)]
    kill = KillState()
    progress = tqdm(total=args.requests, desc=f"stress ({door.name})", unit="req", file=sys.stderr)

    async def worker() -> None:
        async with door.session() as client:
            while not jobs.empty():
                i = jobs.get_nowait()
                await door.request(client, ids[i % len(ids)], outs[i % len(outs)], records[i])
                since = records[i].drafter_since
                if kill.killed_at and not kill.back_at and since is not None and since > kill.killed_at:
                    kill.back_at = since  # the restarted drafter's handshake
                progress.update(1)

    async def supervise() -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(0.2)
            if args.kill_drafter_after is not None and kill.killed_at is None and time.monotonic() - start >= args.kill_drafter_after:
                pipeline.drafter.kill()
                kill.killed_at = time.monotonic()
                print(f"\nstress: drafter killed at {kill.killed_at - start:.1f} s", file=sys.stderr)
            code = pipeline.check()
            if code is not None:  # no verifier, no answers: fail what is left now, not at the timeout
                print(f"\nstress: the verifier exited with code {code}", file=sys.stderr)
                for task in workers:
                    task.cancel()
                return

    start = time.monotonic()
    workers = [asyncio.create_task(worker()) for _ in range(args.clients)]
    watcher = asyncio.create_task(supervise()) if pipeline is not None else None
    await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.monotonic() - start
    if watcher:
        watcher.cancel()
    progress.close()
    for record in records:
        if not (record.is_ok or record.is_mismatch or record.error):
            record.error = "not completed: the verifier exited"
    return records, kill, elapsed


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(records: list[Record], kill: KillState, elapsed: float, restarts: int) -> dict:
    done = [r for r in records if not r.error]
    latencies = [r.finished - r.started for r in done]
    ttfts = [r.first_token - r.started for r in done if r.first_token is not None]
    report = {
        "requests": len(records), "completed": sum(r.is_ok for r in records),
        "failed": sum(bool(r.error) for r in records), "mismatched": sum(r.is_mismatch for r in records),
        "throughput_tokens_per_s": sum(r.num_tokens for r in done) / elapsed,
        "latency_p50_s": percentile(latencies, 50), "latency_p99_s": percentile(latencies, 99),
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99), "drafter_restarts": restarts,
    }
    if kill.killed_at is not None:
        report["target_alone_s"] = (kill.back_at - kill.killed_at) if kill.back_at else None
    return report


def run_stress(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.requests < 1 or args.max_new_tokens < 1 or args.rounds < 1:
        raise ValueError("--clients, --requests, --max-new-tokens and --rounds must be >= 1")
    if args.kill_drafter_after is not None and (args.connect or args.http or args.rounds > 1):
        raise ValueError("--kill-drafter-after needs the pipeline spawned here, one round, no --http")
    prompts = load_prompts(args.prompts, args.requests)
    ids, outs = references(args, prompts)
    pipeline = None if args.connect else LocalPipeline(args)
    endpoint = args.connect or pipeline.start()
    door_proc = None
    try:
        doors = [ZmqDoor(endpoint, args)]
        if args.http:
            tokenizer = load_tokenizer(args.target)
            door_proc, url = start_door_process(args, endpoint)
            doors.append(HttpDoorClients(url, args, lambda t: tokenizer.decode(t, skip_special_tokens=True)))
        runs = {door.name: [] for door in doors}
        for _ in range(args.rounds):  # interleaved: the doors see the same machine state
            for door in doors:
                runs[door.name].append(asyncio.run(drive(door, args, ids, outs, pipeline)))
    finally:
        if door_proc is not None:
            door_proc.terminate()
            door_proc.wait(timeout=30)
        if pipeline is not None:
            pipeline.stop()
    restarts = pipeline.num_drafter_restarts if pipeline else 0
    reports = {name: [summarize(*run, restarts) for run in door_runs] for name, door_runs in runs.items()}
    for name, door_runs in runs.items():
        for records, _, _ in door_runs:
            for record in records:
                if record.error:
                    print(f"failed ({name}): {record.error}", file=sys.stderr)
    report = median_report(reports["zmq"])
    if args.http:
        report = {"zmq": report, "http": median_report(reports["http"])}
        report["http_overhead"] = 1 - report["http"]["throughput_tokens_per_s"] / report["zmq"]["throughput_tokens_per_s"]
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    all_done = all(r["completed"] == r["requests"] for door_reports in reports.values() for r in door_reports)
    return 0 if all_done else 1


def median_report(reports: list[dict]) -> dict:
    """One run's report, or with several: the medians of the rates and latencies, the sums of the counts."""
    if len(reports) == 1:
        return reports[0]
    merged = {}
    for key, value in reports[0].items():
        values = [r[key] for r in reports]
        if key in ("requests", "completed", "failed", "mismatched"):
            merged[key] = sum(values)
        elif key == "drafter_restarts":
            merged[key] = value
        elif all(isinstance(v, (int, float)) for v in values):
            merged[key] = statistics.median(values)
            if key == "throughput_tokens_per_s":
                merged["throughput_runs"] = values
        else:
            merged[key] = value
    merged["rounds"] = len(reports)
    return merged
