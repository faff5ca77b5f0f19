"""`ouroboros draft-data`: the target's own continuations written as draft training text."""
from __future__ import annotations

import argparse

import pytest

from distill.flags import add_draft_data_parser
from distill.onpolicy import continue_batch, run_draft_data
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


def test_chat_requests_cover_every_kind_vary_and_avoid_the_held_out_sets():
    import json
    import random

    from bench.prompts import CHAT
    from distill.chat_requests import KINDS, chat_request

    rng = random.Random(0)
    paragraphs = ["Bees visit flowers for nectar. They carry pollen between plants. Farms depend on them."]
    requests = [chat_request(rng, paragraphs, [("add", "Add two numbers and return the sum.")]) for _ in range(2000)]
    assert {kind for kind, _ in requests} == set(KINDS)
    texts = [text for _, text in requests]
    composed = [chat_request(rng, [], [])[1] for _ in range(2000)]  # from the word lists alone
    assert len(set(composed)) > 0.8 * len(composed)
    held_out = {json.loads(line)["request"] for line in CHAT.read_text().splitlines() if line.strip()}
    assert not held_out & set(texts + composed)
    assert chat_request(random.Random(5), [], []) == chat_request(random.Random(5), [], [])  # seeded


def test_a_batch_is_one_kind_and_chat_prompts_use_the_chat_template(tmp_path):
    import random

    from distill.flags import parse_kinds
    from distill.onpolicy import make_prompts
    from models.loading import BUILTIN_TARGET

    tokenizer = load_tokenizer(BUILTIN_TARGET)
    code = tmp_path / "m.py"
    code.write_text('import os\n\n\ndef area(r):\n    """Return the area of a circle of radius r."""\n'
                    '    return 3.14159 * r * r\n' * 3)
    batches = [make_prompts(random.Random(i), [code], [], tokenizer, 4, 1200, parse_kinds("chat=1,code=1"))
               for i in range(12)]
    assert all(len({kind for kind, _ in batch}) == 1 for batch in batches)
    chats = [p for batch in batches for kind, p in batch if kind == "chat"]
    assert chats and all(p.startswith("<|im_start|>") and p.endswith("<|im_start|>assistant\n") for p in chats)
    assert any(kind == "code" for batch in batches for kind, _ in batch)


@pytest.mark.parametrize("text,message", [("chat=x", "needs a number"), ("essay=1", "unknown kind"),
                                          ("chat=0", "positive sum"), ("chat=-1,code=2", ">= 0")])
def test_bad_kinds_are_refused_by_name(text, message):
    with pytest.raises(SystemExit):
        parse("--out", "x", "--kinds", text)
    from distill.flags import parse_kinds

    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_kinds(text)
