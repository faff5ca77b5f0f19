"""bench --report: one section per command, replaced when the same command runs again."""
import sys

from bench.report import write_report


def fake_report(speed: float) -> dict:
    return {"prompts": 2, "max_new_tokens": 8, "device": "cpu", "results": [
        {"name": "target", "tokens_per_s": 10.0, "speedup": 1.0, "mean_accepted": None, "acceptance_rate": None,
         "identical": True},
        {"name": "pipeline", "tokens_per_s": speed, "speedup": speed / 10, "mean_accepted": 2.5,
         "acceptance_rate": 0.5, "identical": True}]}


def test_a_command_replaces_its_own_section_and_keeps_the_others(tmp_path, monkeypatch):
    doc = tmp_path / "docs" / "benchmarks.md"
    charts = []
    plot = lambda report, path: charts.append(path) or open(path, "w").write("png")  # noqa: E731
    monkeypatch.setattr(sys, "argv", ["ouroboros", "bench", "--limit", "2", "--report", str(doc)])
    write_report(str(doc), fake_report(20.0), plot)
    monkeypatch.setattr(sys, "argv", ["ouroboros", "bench", "--prompts", "p.jsonl", "--report", str(doc)])
    write_report(str(doc), fake_report(30.0), plot)
    monkeypatch.setattr(sys, "argv", ["ouroboros", "bench", "--limit", "2", "--report", str(doc)])
    write_report(str(doc), fake_report(25.0), plot)
    text = doc.read_text()
    assert text.count("`ouroboros bench --limit 2`") == 1 and "| pipeline | 25.00 | 2.50x |" in text
    assert "| pipeline | 20.00 |" not in text and "| pipeline | 30.00 | 3.00x |" in text  # the other kept
    assert text.index("--limit 2") < text.index("p.jsonl")  # replaced in place
    assert all((tmp_path / "docs" / p.split("/")[-1]).exists() for p in charts)
