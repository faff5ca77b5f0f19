"""`ouroboros draft-data`: the target's own continuations written as draft training text."""
from __future__ import annotations

import argparse

import pytest

from distill.onpolicy import add_draft_data_parser, continue_batch, run_draft_data
from models.loading import load_model, load_tokenizer
from tests.conftest import reference_greedy


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_draft_data_parser(parser.add_subparsers())
    return parser.parse_args(["draft-data", *argv])


def test_greedy_continuations_are_the_targets_own(tiny_dirs):
    target, tokenizer = load_model(tiny_dirs["target"]), load_tokenizer(tiny_dirs["target"])
    prompts = ["def add(a, b):\n    return", "The quick brown fox"]
    texts = continue_batch(target, tokenizer, prompts, max_new_tokens=6, temperature=0.0, seed=0)
    for prompt, text in zip(prompts, texts):  # left-padded in a batch, yet each row's own greedy text
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        expected = tokenizer.decode(reference_greedy(target, ids, 6, stop=[tokenizer.eos_token_id]))
        assert text == expected
        assert continue_batch(target, tokenizer, [prompt], 6, 0.0, seed=0)[0] == expected


def test_samples_are_counted_and_a_second_run_appends(tiny_dirs, tmp_path, capsys):
    argv = ["--target", tiny_dirs["target"], "--out", str(tmp_path), "--samples", "3", "--batch-size", "2",
            "--max-new-tokens", "4", "--threads", "1", "--device", "cpu"]
    assert run_draft_data(parse(*argv)) == 0
    assert sorted(p.name for p in tmp_path.glob("sample-*.txt")) == [f"sample-{i:07d}.txt" for i in range(4)]
    assert run_draft_data(parse(*argv, "--samples", "1", "--seed", "1")) == 0  # a whole batch: 2 more
    files = sorted(tmp_path.glob("sample-*.txt"))
    assert len(files) == 6 and all(f.read_text() for f in files)
    assert "6 samples in" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value", [("--samples", "0"), ("--minutes", "0"), ("--temperature", "0")])
def test_absurd_budgets_are_refused(tiny_dirs, tmp_path, flag, value):
    with pytest.raises(ValueError, match=flag):
        run_draft_data(parse("--target", tiny_dirs["target"], "--out", str(tmp_path), flag, value))
