import pytest
import torch

from launch.models import cache_root, check_same_vocab, layers_draft, load_pair
from tests.conftest import tiny_model


def test_cache_root_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "ouroboros"


def test_mismatched_vocabularies_are_refused(tmp_path):
    target = tiny_model("llama")
    other = tiny_model("qwen2")
    other.resize_token_embeddings(120)
    with pytest.raises(ValueError, match="vocabulary"):
        check_same_vocab(target, other)
    target.save_pretrained(tmp_path / "t")
    other.save_pretrained(tmp_path / "d")
    with pytest.raises(ValueError, match="vocabulary"):
        load_pair(str(tmp_path / "t"), str(tmp_path / "d"))


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
    from launch.models import load_model

    model = load_model(str(tmp_path / "t"), "cpu", "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        load_model(str(tmp_path / "t"), "cpu", "int3")
