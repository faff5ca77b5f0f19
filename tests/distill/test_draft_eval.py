"""`ouroboros eval-draft`: hand-computed run lengths and summaries, and the command end to end."""
import json

import pytest

from ouroboros.cli import main
from distill.evaluate import run_lengths, summarize
from tests.families import make_tokenizer, save_pair


def test_run_lengths_are_the_tokens_a_draft_started_there_gets_accepted():
    assert run_lengths([True, True, False, True]) == [2, 1, 0, 1]
    assert run_lengths([]) == []


def test_summary_hand_computed():
    report = summarize([[True, True, False, True]])
    assert report["agreement"] == 0.75 and report["tokens"] == 4 and report["prompts"] == 1
    # position 1: every start has room, 3 of 4 runs reach it; position 2: starts 0 and 1 (room > 1)
    # reached it, and one of them (run 2) goes on
    assert report["acceptance_by_position"][:3] == [0.75, 0.5, 0.0]
    assert report["tokens_per_round"]["1"] == pytest.approx((2 + 2 + 1 + 2) / 4)
    assert report["tokens_per_round"]["2"] == pytest.approx((3 + 2 + 1) / 3)  # starts with 2 tokens of room
    assert set(report["tokens_per_round"]) == {str(g) for g in range(1, 17)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["def add(a, b):", "The quick brown fox"]))
    target, draft = save_pair(root, "llama", make_tokenizer())
    return target, draft, str(prompts)


def run(tmp_path, target: str, draft: str, prompts: str) -> dict:
    out = tmp_path / "eval.json"
    assert main(["eval-draft", "--target", target, "--draft", draft, "--prompts", prompts, "--limit", "2",
                 "--max-new-tokens", "12", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_target_as_its_own_draft_agrees_everywhere(pair, tmp_path):
    target, _, prompts = pair
    report = run(tmp_path, target, target, prompts)
    assert set(report) == {"agreement", "acceptance_by_position", "tokens_per_round", "draft_step_ratio",
                           "prompts", "tokens"}
    assert (report["prompts"], report["tokens"]) == (2, 24)
    assert report["agreement"] == 1.0 and report["acceptance_by_position"][:12] == [1.0] * 12
    assert report["tokens_per_round"]["4"] == 5.0


def test_a_smaller_draft_agrees_less_and_steps_cheaper(pair, tmp_path):
    target, draft, prompts = pair
    report = run(tmp_path, target, draft, prompts)
    assert 0.0 < report["agreement"] < 1.0
    assert report["tokens_per_round"]["4"] < 5.0
    assert report["draft_step_ratio"] < 1.0  # 1 layer against 4
