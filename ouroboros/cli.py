"""The whole `ouroboros` command line: launch's commands (launch.cli) plus bench, stress, the
draft tools (train-draft, eval-draft, draft-data) and demo."""
from __future__ import annotations

import argparse
import sys

from bench.flags import add_bench_parser, add_stress_parser
from distill.flags import add_draft_data_parser, add_eval_draft_parser, add_train_draft_parser
from launch import cli as launch_cli
from launch.serve import add_serve_flags

HANDLERS = launch_cli.HANDLERS | {
    "stress": ("bench.stress", "run_stress"), "bench": ("bench.run", "run_bench"),
    "eval-draft": ("distill.evaluate", "run_eval_draft"), "train-draft": ("distill.train", "run_train_draft"),
    "draft-data": ("distill.onpolicy", "run_draft_data"), "demo": ("ouroboros.demo", "run_demo"),
}


def build_parser() -> argparse.ArgumentParser:
    parser, sub = launch_cli.new_parser()
    launch_cli.add_launch_commands(sub)
    add_train_draft_parser(sub)
    add_eval_draft_parser(sub)
    add_draft_data_parser(sub)
    add_bench_parser(sub)
    add_stress_parser(sub)
    demo = sub.add_parser("demo", help="the pipeline on two code and two chat prompts, each beside the target alone")
    demo.add_argument("--max-new-tokens", type=launch_cli.positive_int, default=128)
    demo.add_argument("--chart", default="ouroboros-demo.png", metavar="OUT.png", help="where the bar chart goes")
    add_serve_flags(demo)
    demo.set_defaults(port=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    return launch_cli.main(argv, build_parser, HANDLERS)


if __name__ == "__main__":
    sys.exit(main())
