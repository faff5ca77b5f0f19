"""Fixtures for end-to-end tests: real processes on a small model that has a real tokenizer."""
from __future__ import annotations

import pytest

from ouroboros.cli import build_parser
from launch.serve import LocalPipeline


def serve_args(target: str, draft: str, *extra: str):
    return build_parser().parse_args(
        ["serve", "--target", target, "--draft", draft, "--port", "0", "--ready-timeout", "120",
         "--draft-timeout", "0.5", "--gamma", "6", *extra]
    )


@pytest.fixture(scope="module")
def self_draft_pipeline(tiny_dirs):
    """The pipeline with a draft that predicts exactly what the target does at an eighth of its
    layers (tiny_dirs): a pair that clearly pays, so the default decision drafts."""
    with LocalPipeline(serve_args(tiny_dirs["target"], "layers:0")) as pipeline:
        yield pipeline


def generate_concurrently(endpoint: str, prompts: list[list[int]], max_new_tokens: int) -> list:
    """One client thread per prompt, all at once (so the verifier batches them); each prompt's
    result, or None for one that did not finish."""
    import threading

    from protocol.client import Client

    results: dict[int, object] = {}

    def run(i: int, ids: list[int]) -> None:
        with Client(endpoint, timeout=60) as client:
            results[i] = client.generate(ids, max_new_tokens=max_new_tokens)

    threads = [threading.Thread(target=run, args=(i, ids)) for i, ids in enumerate(prompts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [results.get(i) for i in range(len(prompts))]
