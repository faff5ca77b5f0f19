"""`ouroboros bench` and `ouroboros stress` command lines, without torch (the commands load it when
they run)."""
from __future__ import annotations

from launch import config as cfg
from launch.serve import add_serve_flags

CONTENDERS = ("target", "target-1thread", "target-engine", "hf-assisted", "hf-prompt-lookup", "sequential",
              "sequential-1thread", "pipeline")
DEFAULT_CONTENDERS = "target,target-1thread,hf-assisted,hf-prompt-lookup,sequential,pipeline"


def add_bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="tokens/s of the pipeline beside the target alone and HF's decoders")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--prompts", metavar="FILE.jsonl", help="one JSON object per line with a 'prompt' string")
    source.add_argument("--humaneval", action="store_true", help="the HumanEval prompts (the default)")
    bench.add_argument("--limit", type=int, default=20, help="prompts to run")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--temperature", type=float, default=0.0)
    bench.add_argument("--top-p", type=float, default=1.0)
    bench.add_argument("--top-k", type=int, default=0)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--contenders", default=DEFAULT_CONTENDERS, help=f"comma list of {', '.join(CONTENDERS)}; pipeline@DRAFT is the pipeline "
                       "with another draft (e.g. pipeline@layers:0,1), beside the one --draft names")
    bench.add_argument("--reference", default="target", metavar="NAME",
                       help="the contender every speedup and every identity check is measured against (run if not "
                            "listed): target (HF generate), or target-engine for our engine without drafts, which is "
                            "what speculation reproduces bit for bit in bfloat16 (README: what identical means)")
    bench.add_argument("--threads", type=int, default=2, help="cores every contender gets in total")
    bench.add_argument("--verifier-threads", type=int, default=None,
                       help="the pipeline's verifier threads (default --threads/2)")
    bench.add_argument("--drafter-threads", type=int, default=None,
                       help="the pipeline's drafter threads (default --threads/2)")
    bench.add_argument("--solo-threads", type=int, default=None,
                       help="the pipeline's verifier threads while the drafter rests (default: both processes' "
                            "threads where they share this CPU); --solo-threads 1 --threads 2 is device parity, "
                            "one core per process with none borrowed")
    bench.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    bench.add_argument("--plot", metavar="OUT.png", help="write a bar chart of tokens/s")
    bench.add_argument("--report", metavar="FILE.md", help="write this run as a section of a Markdown file (its "
                       "command, commit and table, its chart beside the file), replacing the same command's section")
    bench.add_argument("--pass-costs", action="store_true",
                       help="instead: the cost of one pass by width and rows (engine and HF, target and draft), "
                            "on --threads/2 threads, as each pipeline process has")
    bench.add_argument("--device", default="cpu", help="where the models run (cpu, cuda:N): every contender's, the "
                       "pipeline's two processes included, or with --pass-costs both models'")
    cfg.add_model_flags(bench)
    cfg.add_algorithm_flags(bench)
    cfg.add_verifier_flags(bench)


def add_stress_parser(sub) -> None:
    stress = sub.add_parser("stress", help="concurrent clients against the pipeline, outputs checked")
    mode = stress.add_mutually_exclusive_group()
    mode.add_argument("--connect", metavar="ADDR", help="a running `ouroboros serve`")
    mode.add_argument("--spawn", action="store_true", help="start the pipeline here (the default)")
    stress.add_argument("--clients", type=int, default=8)
    stress.add_argument("--requests", type=int, default=32)
    stress.add_argument("--max-new-tokens", type=int, default=32)
    stress.add_argument("--prompts", metavar="FILE.jsonl", help="prompts (default: HumanEval)")
    stress.add_argument("--kill-drafter-after", type=float, default=None, metavar="SECONDS",
                        help="SIGKILL the drafter once, this long into the run (needs --spawn)")
    stress.add_argument("--timeout", type=float, default=300.0, help="seconds of server silence per request")
    stress.add_argument("--http", action="store_true",
                        help="also drive the OpenAI HTTP door (an `ouroboros http-door` process in front of the "
                             "same verifier) with the same clients, interleaved with the ZeroMQ door")
    stress.add_argument("--rounds", type=int, default=1, help="runs per door; the report gives medians")
    stress.add_argument("--json", metavar="OUT.json")
    add_serve_flags(stress)
    stress.set_defaults(port=0)
