"""bench.simulate: the pass-cost curve and each mode's round times, on rounds made up here."""
import json

import pytest

from bench.simulate import HANDOVER_MS, Curve, load_costs, main, simulate


def test_the_curve_interpolates_and_extends_by_the_last_slope():
    curve = Curve({1: 10.0, 5: 14.0, 9: 22.0})
    assert curve(1) == 10.0 and curve(3) == pytest.approx(12.0) and curve(7) == pytest.approx(18.0)
    assert curve(11) == pytest.approx(26.0) and curve(0) == 10.0
    assert Curve({4: 3.0})(16) == 3.0


def round_(rank, own_bonus=False, hit=False, length=4, committed=2):
    return {"trunk": 4, "accepted": committed - 1, "committed": committed, "rank": rank, "own_bonus": own_bonus,
            "hit": hit, "width": 5, "next_length": length}


def test_each_mode_waits_for_the_drafts_it_did_not_have_ready():
    target, draft = Curve({1: 20.0, 16: 20.0}), Curve({1: 2.0, 16: 2.0})  # flat: every pass alike
    rounds = [round_(0, own_bonus=True, committed=5), round_(3), round_(None), round_(40)]
    found = simulate(rounds, target, draft, outcomes=16)
    tokens = 5 + 2 + 2 + 2
    per_round = {"synchronous": [28, 28, 28, 28],  # 4 draft steps, then the pass
                 "single-outcome": [20, 28, 28, 28],  # only the chain's own outcome was ready
                 "multi-outcome": [20, 20, 28, 28]}  # ranks 0 and 3 held; no rank, rank 40: drafted then
    for mode, times in per_round.items():
        assert found[mode]["tokens_per_s"] == pytest.approx(1000 * tokens / (sum(times) + 4 * HANDOVER_MS))
    assert found["single-outcome"]["hit_rate"] == 0.25 and found["multi-outcome"]["hit_rate"] == 0.5
    assert simulate(rounds, target, draft, outcomes=1)["multi-outcome"]["hit_rate"] == 0.25


def test_a_tree_longer_than_the_pass_adds_what_did_not_fit():
    target, draft = Curve({1: 10.0}), Curve({1: 2.0, 16: 4.0})
    found = simulate([round_(0)], target, draft, outcomes=16)
    tree = 2.0 + 4 * 4.0  # one chain step, then 4 tree passes of 16 rows
    assert found["multi-outcome"]["tokens_per_s"] == pytest.approx(1000 * 2 / (10.0 + (tree - 10.0) + HANDOVER_MS))


def test_the_command_reads_a_recording_and_pass_costs(tmp_path, capsys):
    rounds = tmp_path / "rounds.jsonl"
    rounds.write_text("\n".join(json.dumps(r | {"round_ms": 25.0}) for r in [round_(0), round_(None)]) + "\n")
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"passes": [
        {"model": m, "via": "engine", "rows": 1, "tokens": t, "context": 150, "ms": ms}
        for m, t, ms in [("target", 1, 20.0), ("target", 16, 30.0), ("draft", 1, 2.0), ("draft", 16, 3.0)]]}))
    target, draft = load_costs(str(costs))
    assert target(16) == 30.0 and draft(1) == 2.0
    out = tmp_path / "out.json"
    assert main(["--rounds", str(rounds), "--pass-costs", str(costs), "--json", str(out)]) == 0
    assert "multi-outcome" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["modes"]) == {"synchronous", "single-outcome", "multi-outcome", "recorded"}
    assert main(["--rounds", str(tmp_path / "missing.jsonl"), "--pass-costs", str(costs)]) == 2


def test_a_verifier_debug_log_gives_the_targets_curve(tmp_path):
    from bench.simulate import load_pass_log

    log = tmp_path / "debug.log"
    lines = [f"[verifier] {100 + i} pass of 1 rows x {w} tokens ({w} real): {ms} ms, 1 committed"
             for i, (w, ms) in enumerate([(1, 30), (1, 34), (1, 31), (4, 40), (4, 38), (4, 41), (9, 99)])]
    log.write_text("\n".join(lines + ["[drafter] 5 verdict x: 3 -> 4 tokens", "[verifier] 7 pass of 2 rows x 3 tokens"
                                      " (5 real): 50 ms, 2 committed"]) + "\n")
    curve = load_pass_log(str(log))
    assert curve.widths == [1, 4] and curve(1) == 31 and curve(4) == 40  # medians; width 9 seen once
    quiet = tmp_path / "info.log"
    quiet.write_text("[verifier] 1 KV slots: 16 x 4096 tokens\n")
    with pytest.raises(ValueError, match="DEBUG"):
        load_pass_log(str(quiet))
