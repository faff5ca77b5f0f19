"""`python -m bench.simulate`: replay recorded rounds with the pass costs of any device, and
predict tokens/s for three ways to run the drafter.

The rounds come from a pipeline run with `--record-rounds FILE` (drafter.server.record_round):
per verdict, the trunk verified, the tokens committed, where the outcome ranked among the
speculation cache's likely outcomes (drafter.outcomes), and the block's pass width. The costs
come from `ouroboros bench --pass-costs --json FILE` on the device to project to (graphed passes
where there are any, else our engine's), interpolated by width.

Each round's time, with T(w) the target's pass of width w, D(n) a draft pass of n rows, and g'
the next round's draft length:
- synchronous (one device, or taking turns): g' draft steps, then the pass: g' D(1) + T(w);
- single-outcome overlap: the pre-draft (g' + 1 steps) runs during the pass, and is the right
  one only when the whole trunk and the draft's own next token were accepted: T(w) on such a
  hit once the pre-draft fits in it, else T(w) + g' D(1);
- multi-outcome overlap (the speculation cache, N outcomes): one chain step, then g' tree passes
  of N rows during the pass; a hit when the outcome ranked below N: T(w) plus what of the tree
  did not fit in it, else T(w) + g' D(1). A verdict past the trunk (a branch accepted) has no
  rank; it is a hit where the recorded run's cache held it.
Every mode adds HANDOVER_MS a round (the messages). The tokens committed are the recorded ones:
the modes differ only in when the drafts are ready."""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from bisect import bisect_left
from pathlib import Path

HANDOVER_MS = 0.5  # a Verdict and a Draft over IPC or loopback TCP, both processes' loops included


class Curve:
    """ms of one pass by its width (rows x tokens), linear between measured widths."""

    def __init__(self, points: dict[int, float]) -> None:
        if not points:
            raise ValueError("a pass-cost curve needs at least one point")
        self.widths = sorted(points)
        self.ms = [points[w] for w in self.widths]

    def __call__(self, width: float) -> float:
        w, ms = self.widths, self.ms
        if width <= w[0] or len(w) == 1:
            return ms[0] if width <= w[0] else ms[-1] + (width - w[-1]) * (ms[-1] - ms[0]) / max(w[-1] - w[0], 1)
        i = bisect_left(w, width)
        if i == len(w):  # past the last point: the last segment's slope
            return ms[-1] + (width - w[-1]) * (ms[-1] - ms[-2]) / (w[-1] - w[-2])
        lo, hi = w[i - 1], w[i]
        return ms[i - 1] + (width - lo) * (ms[i] - ms[i - 1]) / (hi - lo)


def load_costs(path: str) -> tuple[Curve, Curve]:
    """(target by tokens, draft by rows x tokens) from a --pass-costs JSON: its graphed passes
    where present, else our engine's; a draft's rows and tokens both count as width."""
    data = json.loads(Path(path).read_text())
    passes = data["passes"] if isinstance(data, dict) else data
    curves = []
    for model in ("target", "draft"):
        mine = [p for p in passes if p["model"] == model and p.get("context", 1)]
        via = "graphs" if any(p["via"] == "graphs" for p in mine) else "engine"
        points = {}
        for p in mine:
            if p["via"] == via and (p["rows"] == 1 or p["tokens"] == 1):
                points.setdefault(p["rows"] * p["tokens"], p["ms"])
        curves.append(Curve(points))
    return curves[0], curves[1]


PASS_LINE = re.compile(r"\[verifier\] \d+ pass of 1 rows x (\d+) tokens \(\d+ real\): (\d+(?:\.\d+)?) ms")


def load_pass_log(path: str) -> Curve:
    """The target's curve from a pipeline's own passes: the median of each width's one-row passes
    in a verifier DEBUG log (OUROBOROS_LOG_LEVEL=DEBUG), widths seen at least 3 times."""
    by_width: dict[int, list[float]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        found = PASS_LINE.search(line)
        if found:
            by_width.setdefault(int(found.group(1)), []).append(float(found.group(2)))
    points = {w: statistics.median(ms) for w, ms in by_width.items() if len(ms) >= 3}
    if not points:
        raise ValueError(f"{path} holds no verifier pass lines: run the pipeline with OUROBOROS_LOG_LEVEL=DEBUG")
    return Curve(points)


def load_rounds(path: str) -> list[dict]:
    rounds = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rounds:
        raise ValueError(f"{path} holds no rounds: record them with --record-rounds FILE")
    return rounds


def simulate(rounds: list[dict], target: Curve, draft: Curve, outcomes: int) -> dict[str, dict]:
    """Predicted tokens/s and hit rate of each mode over `rounds` (in recorded order)."""
    totals = {mode: [0.0, 0] for mode in ("synchronous", "single-outcome", "multi-outcome")}
    tokens = sum(r["committed"] for r in rounds)
    step = draft(1)
    for r in rounds:
        pass_ms, length = target(r["width"]), r["next_length"]
        drafting = length * step
        chain_hit = r["own_bonus"]
        # a verdict past the trunk (a branch accepted) has no rank: the recorded cache's word stands
        multi_hit = length > 0 and (r["rank"] < outcomes if r["rank"] is not None else bool(r["hit"]))
        tree = step + length * draft(max(outcomes, 1))
        times = {
            "synchronous": drafting + pass_ms,
            "single-outcome": pass_ms + (max((length + 1) * step - pass_ms, 0.0) if chain_hit else drafting),
            "multi-outcome": pass_ms + (max(tree - pass_ms, 0.0) if multi_hit else drafting),
        }
        for mode, ms in times.items():
            totals[mode][0] += ms + HANDOVER_MS
            totals[mode][1] += int(mode == "single-outcome" and chain_hit or mode == "multi-outcome" and multi_hit)
    drafted = max(sum(r["next_length"] > 0 for r in rounds), 1)  # rounds whose next block was wanted
    return {mode: {"tokens_per_s": 1000 * tokens / ms, "hit_rate": hits / drafted if mode != "synchronous"
                   else None} for mode, (ms, hits) in totals.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", required=True, metavar="FILE.jsonl", help="rounds recorded by --record-rounds")
    parser.add_argument("--pass-costs", required=True, metavar="FILE.json",
                        help="`ouroboros bench --pass-costs --json` of the device to project to")
    parser.add_argument("--pass-log", metavar="FILE",
                        help="the target's costs from a verifier DEBUG log instead (the recorded run's own passes; "
                             "the draft's still come from --pass-costs)")
    parser.add_argument("--outcomes", type=int, default=16, help="the speculation cache's outcomes (--outcomes)")
    parser.add_argument("--json", metavar="OUT.json", help="write the prediction as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.outcomes < 0:
        parser.error(f"--outcomes must be >= 0, got {args.outcomes}")
    try:
        rounds = load_rounds(args.rounds)
        target, draft = load_costs(args.pass_costs)
        if args.pass_log:
            target = load_pass_log(args.pass_log)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench.simulate: {exc}", file=sys.stderr)
        return 2
    result = simulate(rounds, target, draft, args.outcomes)
    timed = [r for r in rounds if r.get("round_ms") is not None]
    if timed:  # what the recorded run itself did, its first round per request aside
        wanted = max(sum(r["next_length"] > 0 for r in timed), 1)
        result["recorded"] = {"tokens_per_s": 1000 * sum(r["committed"] for r in timed) / sum(r["round_ms"] for r in timed),
                              "hit_rate": sum(bool(r["hit"]) for r in timed) / wanted}
    source = args.pass_costs + (f" and {args.pass_log}" if args.pass_log else "")
    print(f"{len(rounds)} rounds, {sum(r['committed'] for r in rounds)} tokens; costs {source}: target "
          f"{target(1):.1f} ms (1 token) / {target(16):.1f} ms (16), draft {draft(1):.1f} ms / {draft(16):.1f} ms")
    print(f"{'mode':18}{'tokens/s':>10}{'hits':>7}")
    for mode, row in result.items():
        hits = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.2f}"
        print(f"{mode:18}{row['tokens_per_s']:>10.1f}{hits:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": len(rounds), "outcomes": args.outcomes, "modes": result},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
