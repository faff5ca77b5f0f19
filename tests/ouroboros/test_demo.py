"""`ouroboros demo` (what `make demo` runs): a table of every prompt, a total line and a chart."""
from ouroboros.cli import build_parser
from ouroboros.demo import run_demo


def test_the_demo_prints_each_prompt_the_total_and_writes_its_chart(tmp_path, capsys):
    chart = tmp_path / "demo.png"
    args = build_parser().parse_args(["demo", "--max-new-tokens", "12", "--chart", str(chart)])
    assert run_demo(args) == 0  # every output identical to the target alone
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("HumanEval", "chat:", "total"))]
    assert [row.split()[0] for row in rows] == ["HumanEval", "HumanEval", "chat:", "chat:", "total"]
    assert all(row.rstrip().endswith("True") for row in rows)
    assert chart.stat().st_size > 1000 and f"bar chart: {chart}" in out
