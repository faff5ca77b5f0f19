"""Each knob is written once, in its frozen config (protocol.knobs): the flags, the configs and a
child's argv are built from it, and a child parses back exactly the parent's config."""
import dataclasses

import pytest

from drafter.config import DrafterConfig
from launch import config as cfg
from ouroboros.cli import build_parser
from verifier.config import VerifierConfig


def test_defaults_are_the_configs_defaults():
    args = build_parser().parse_args(["serve"])
    assert cfg.drafter_config(args) == DrafterConfig()
    assert cfg.verifier_config(args) == VerifierConfig()


def test_a_child_parses_back_the_parents_configs():
    changed = ["--gamma", "5", "--window", "2", "--no-text-phrases", "--draft-batch", "3", "--max-batch", "2",
               "--max-sessions", "4", "--draft-timeout", "0.75", "--own-lookup-tokens", "0"]
    parent = build_parser().parse_args(["serve", *changed])
    drafter = build_parser().parse_args(["drafter", "--connect", "ipc:///x", *cfg.algorithm_argv(parent)])
    verifier = build_parser().parse_args(["verifier", "--bind", "tcp://127.0.0.1:1", "--drafter-bind", "ipc:///x",
                                          *cfg.verifier_argv(parent)])
    assert cfg.drafter_config(drafter) == cfg.drafter_config(parent)
    assert cfg.verifier_config(verifier) == cfg.verifier_config(parent)
    got = cfg.drafter_config(parent)
    assert (got.gamma, got.window, got.seed_pool_from_text, got.max_batch) == (5, 2, False, 3)
    assert cfg.verifier_config(parent).own_lookup_tokens == 0


@pytest.mark.parametrize("config_type", [DrafterConfig, VerifierConfig])
def test_every_knob_is_a_serve_flag_with_its_help(config_type):
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for field in dataclasses.fields(config_type):
        if "flag" in field.metadata:
            assert field.metadata["flag"] in text and field.metadata["help"][:20] in text.replace("\n", " ")


def test_the_vllm_doors_drafter_holds_as_many_rows_as_serve_is_told():
    """`serve --verifier vllm --max-sessions N`: the drafter it starts keeps N KV slots, so its
    Hello tells the door N and more rows decode with vLLM alone."""
    from launch.vllm_serve import drafter_command

    args = build_parser().parse_args(["serve", "--verifier", "vllm", "--http", "8000", "--max-sessions", "5"])
    command = drafter_command(args, "tcp://127.0.0.1:1")
    child = build_parser().parse_args(command[command.index("drafter"):])
    assert child.max_sessions == 5
