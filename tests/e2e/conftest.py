"""Fixtures for end-to-end tests: real processes on a small model that has a real tokenizer."""
from __future__ import annotations

import pytest

from launch.cli import build_parser
from launch.serve import LocalPipeline


def serve_args(target: str, draft: str, *extra: str):
    return build_parser().parse_args(
        ["serve", "--target", target, "--draft", draft, "--port", "0", "--ready-timeout", "120",
         "--draft-timeout", "0.5", "--gamma", "6", *extra]
    )


@pytest.fixture(scope="module")
def self_draft_pipeline(tiny_dirs):
    """The pipeline with a target-identical draft: every pre-draft should hold. Every draft is
    verified (--verify-all-drafts): with a draft as costly as the target, drafting gamma tokens
    costs about what the target alone takes to decode them, so the solo switch (verifier.solo)
    may rightly pick the target alone, by timing; these tests are about the drafts' path."""
    with LocalPipeline(serve_args(tiny_dirs["target"], "layers:0", "--verify-all-drafts")) as pipeline:
        yield pipeline
