import pytest
import torch

from models.loading import cache_root, layers_draft, load_pair
from tests.families import PADDING_ROWS, family_pair, make_tokenizer
from tests.conftest import tiny_model


def test_cache_root_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "ouroboros"


def test_pairs_are_matched_by_tokenizer_not_by_matrix_size(tmp_path):
    """Padding rows past the tokenizer are accepted (Qwen2.5-7B / 0.5B); a tokenizer of the same
    size whose ids mean other text is refused in one sentence."""
    tokenizer = make_tokenizer()
    target, draft = family_pair("qwen2-padded", len(tokenizer))
    assert target.config.vocab_size == draft.config.vocab_size + PADDING_ROWS
    for name, model, tok in (("t", target, tokenizer), ("d", draft, tokenizer),
                             ("swapped", draft, make_tokenizer(swap=True))):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    pair = load_pair(str(tmp_path / "t"), str(tmp_path / "d"))
    assert pair.draft.config.vocab_size == len(tokenizer)
    with pytest.raises(ValueError, match="the draft's tokenizer differs from the target's"):
        load_pair(str(tmp_path / "t"), str(tmp_path / "swapped"))
    assert len(make_tokenizer(swap=True)) == len(tokenizer)


def test_layers_draft_copies_the_chosen_layers():
    target = tiny_model("llama", layers=3)
    draft = layers_draft(target, [0, 2])
    assert draft.config.num_hidden_layers == 2
    assert torch.equal(draft.model.layers[1].mlp.up_proj.weight, target.model.layers[2].mlp.up_proj.weight)
    assert torch.equal(draft.lm_head.weight, target.lm_head.weight)
    with pytest.raises(ValueError, match="layers"):
        layers_draft(target, [5])


def test_models_are_placed_with_a_dtype(tmp_path):
    target = tiny_model("llama")
    target.save_pretrained(tmp_path / "t")
    from models.loading import load_model

    model = load_model(str(tmp_path / "t"), "cpu", "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        load_model(str(tmp_path / "t"), "cpu", "int3")


def test_each_role_gets_its_own_thread_count():
    from ouroboros.cli import build_parser
    from launch.serve import _threads

    args = build_parser().parse_args(["serve", "--verifier-threads", "2", "--threads-per-process", "3"])
    assert (_threads(args, "verifier_threads"), _threads(args, "drafter_threads")) == (2, 3)
    args = build_parser().parse_args(["serve", "--threads-per-process", "0"])
    with pytest.raises(ValueError, match="--threads-per-process must be >= 1"):
        _threads(args, "drafter_threads")
