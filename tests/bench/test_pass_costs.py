"""`ouroboros bench --pass-costs` on a tiny pair: every shape, both models, both ways, as JSON."""
import json

from ouroboros.cli import main
from tests.families import make_tokenizer, save_pair


def test_pass_costs_report_every_shape(tmp_path, monkeypatch):
    import bench.pass_costs as pass_costs

    monkeypatch.setattr(pass_costs, "REPEATS", 2)
    target, draft = save_pair(tmp_path, "mistral", make_tokenizer())
    out = tmp_path / "costs.json"
    assert main(["bench", "--pass-costs", "--target", target, "--draft", draft, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["device"], report["threads"], report["context"]) == ("cpu", 1, 150)
    shapes = {(p["model"], p["via"], p["rows"], p["tokens"], p["context"]) for p in report["passes"]}
    for model in ("target", "draft"):
        for via in ("engine", "hf"):
            assert {(model, via, 1, t, 150) for t in (1, 2, 4, 8, 16, 32)} <= shapes
            assert {(model, via, r, 1, 150) for r in (2, 4, 8)} <= shapes
            assert (model, via, 1, 100, 0) in shapes
    assert len(report["passes"]) == 2 * 2 * 10 and all(p["ms"] > 0 for p in report["passes"])
