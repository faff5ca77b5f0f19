"""Incremental detokenization (verifier.detokenize) with the built-in target's tokenizer: the
streamed text equals the whole decode, also across multi-byte characters split between tokens,
the work per step does not grow with the text, and stop strings and stop tokens cut where a whole
decode would."""
import random

import pytest

from models.loading import load_tokenizer
from verifier.detokenize import IncrementalText
from verifier.stopping import find_stop_string, finish

TEXT = ("Déjà vu: naïve café, 日本語のテキスト, emoji 🦊🐍🎉 and math ∑∫√ — " * 3
        + "def add(a, b):\n    return a + b  # 加法\n")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def decoder(tokenizer, counter: list[int]):
    def decode(tokens: list[int]) -> str:
        counter[0] += len(tokens)
        return tokenizer.decode(tokens, skip_special_tokens=True)
    return decode


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_streamed_text_is_the_whole_decode_and_never_ends_mid_character(tokenizer, step):
    tokens = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    text = IncrementalText(decoder(tokenizer, [0]))
    seen = []
    for start in range(0, len(tokens), step):
        text.extend(tokens[start : start + step], is_final=start + step >= len(tokens))
        assert "\ufffd" not in text.text
        seen.append(text.text)
    assert text.text == tokenizer.decode(tokens) == TEXT
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))  # text only grows


def test_work_per_step_does_not_grow_with_the_answer(tokenizer):
    tokens = tokenizer(TEXT * 12, add_special_tokens=False)["input_ids"]
    assert len(tokens) > 1500
    counter = [0]
    text = IncrementalText(decoder(tokenizer, counter))
    for start in range(0, len(tokens), 3):
        text.extend(tokens[start : start + 3], is_final=start + 3 >= len(tokens))
    assert text.text == TEXT * 12
    assert counter[0] < 8 * len(tokens)  # decoding the whole text each step would be ~n^2 / 6


@pytest.mark.parametrize("stop", ["café", "🐍", "return a", "テキスト, emoji"])
def test_a_stop_string_cuts_the_tokens_and_text_a_whole_decode_would(tokenizer, stop):
    tokens = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    text = IncrementalText(decoder(tokenizer, [0]))
    cut, checked = None, 0
    for start in range(0, len(tokens), 4):
        text.extend(tokens[start : start + 4])
        cut = text.stop_cut([stop], checked)
        checked = len(text.text)
        if cut:
            break
    expected_count = next(n for n in range(1, len(tokens) + 1) if stop in tokenizer.decode(tokens[:n]))
    assert cut == (expected_count, TEXT.index(stop))
    assert find_stop_string(TEXT, [stop]) == cut[1]


@pytest.mark.parametrize("step", [1, 3, 8])
def test_finish_over_the_appended_tokens_cuts_where_the_whole_output_would(step):
    """The budget and stop-token cut, given each round's appended tokens only, equals the cut of
    the whole output: after the first stop token, else at max_new_tokens."""
    rng = random.Random(step)
    for _ in range(200):
        stream = [rng.randrange(20) for _ in range(rng.randrange(1, 60))]
        max_new, stops = rng.randrange(1, 50), {rng.randrange(20), 99}
        kept, reason = [], None
        for start in range(0, len(stream), step):
            appended, reason = finish(stream[start : start + step], len(kept), max_new, stops)
            kept += appended
            if reason is not None:
                break
        first_stop = next((i for i, t in enumerate(stream[:max_new]) if t in stops), None)
        if first_stop is not None:
            assert (kept, reason) == (stream[: first_stop + 1], "stop")
        elif len(stream) >= max_new:
            assert (kept, reason) == (stream[:max_new], "length")
        else:
            assert (kept, reason) == (stream, None)
