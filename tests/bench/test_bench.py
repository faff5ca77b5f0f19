"""`ouroboros bench`: bad prompt files give clear errors; a small run writes its JSON and plot."""
import json
import subprocess
import sys

import pytest

from bench.run import load_prompts


def test_prompt_file_errors_name_the_line(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_prompts(str(tmp_path / "missing.jsonl"), 5)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(str(empty), 5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_prompts(str(bad), 5)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load_prompts(str(broken), 5)
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "id": 1}\n{"prompt": "b"}\n{"prompt": "c"}\n')
    assert load_prompts(str(good), 2) == ["a", "b"]
    assert len(load_prompts(None, 3)) == 3  # HumanEval


def test_small_bench_run_writes_json_and_plot(tiny_dirs, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "Once upon a time"}\n')
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    cmd = [sys.executable, "-m", "ouroboros.cli", "bench", "--prompts", str(prompts), "--max-new-tokens", "16",
           "--target", tiny_dirs["target"], "--draft", "layers:0", "--json", str(out), "--plot", str(png),
           "--contenders", "target,hf-prompt-lookup,sequential,pipeline"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) == {"device", "threads", "prompts", "max_new_tokens", "reference", "results"}
    assert report["prompts"] == 2 and report["reference"] == "target"
    names = [r["name"] for r in report["results"]]
    assert names == ["target", "hf-prompt-lookup", "sequential", "pipeline"]
    for r in report["results"]:
        assert r["identical"] is True
        assert r["tokens_per_s"] > 0
    assert report["results"][0]["mean_accepted"] is None
    assert report["results"][3]["mean_accepted"] > 1  # the perfect draft is used
    assert png.stat().st_size > 1000


def test_reference_names_the_contender_every_ratio_and_identity_is_against(tiny_dirs, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):"}\n')
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "ouroboros.cli", "bench", "--prompts", str(prompts), "--max-new-tokens", "12",
           "--target", tiny_dirs["target"], "--draft", "layers:0", "--json", str(out),
           "--reference", "target-engine", "--contenders", "sequential"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["reference"] == "target-engine"
    assert [r["name"] for r in report["results"]] == ["target-engine", "sequential"]
    assert report["results"][0]["speedup"] == 1.0 and all(r["identical"] for r in report["results"])
    bad = subprocess.run(cmd[:-4] + ["--reference", "nope"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--reference: unknown 'nope'" in bad.stderr
