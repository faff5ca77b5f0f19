"""The docs that must stay true: the flag reference is the parser's, and no tracked file speaks of
how the work was done (sessions, reviews, dated "latest" notes): history lives in git."""
import re
import subprocess
from pathlib import Path

from ouroboros.flag_doc import flag_doc

ROOT = Path(__file__).resolve().parents[2]
# how the work was done, not what the product is: none of it belongs in a tracked file
DIARY = re.compile(
    r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
    r"this|last|previous|earlier|later|that) session\b|\bafter a review\b|\bthe review\b|\breview's\b|"
    r"\bre-measured\b|\blatest before\b|\bearlier the same day\b|\bdesign\.md\b",
    re.IGNORECASE,
)


def test_the_flag_reference_is_the_parsers():
    written = (ROOT / "docs" / "flags.md").read_text()
    assert written == flag_doc(), "docs/flags.md is stale: python -m ouroboros.flag_doc > docs/flags.md"


def test_every_readme_flag_exists():
    """A flag the README names (`--like-this`) is one some command takes (or `python -m
    bench.simulate`, `python -m bench.vllm`)."""
    from bench import simulate, vllm

    known = set(re.findall(r"`(--[a-z0-9-]+)`", flag_doc()))
    for parser in (simulate.build_parser(), vllm.build_parser()):
        known |= {flag for action in parser._actions for flag in action.option_strings}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", (ROOT / "README.md").read_text()))
    foreign = {"--no-deps", "--speculative-config", "--standalone", "--nproc-per-node", "--nnodes",
               "--rdzv-backend", "--rdzv-endpoint", "--help", "--tensor-parallel-size"}
    assert named - known - foreign == set()


def test_no_tracked_file_is_a_diary():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ""} or not path.is_file():
            continue
        if name == "tests/ouroboros/test_docs.py":
            continue  # the pattern itself
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if DIARY.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_the_recipes_commands_parse():
    """Every `$cli ...` command of the shipped draft's recipes is one the CLI takes, flags and all
    (a shell variable stands in as a value its flag takes)."""
    import shlex

    from ouroboros.cli import build_parser

    parser = build_parser()
    stand_in = {"--minutes": "1", "--threads": "1", "--batch-size": "1", "--layers": "0"}
    for recipe in ("gpu_recipe.sh", "chat_recipe.sh"):
        text = (ROOT / "distill" / recipe).read_text().replace("\\\n", " ")
        commands = [line.split("$cli", 1)[1] for line in text.splitlines() if line.lstrip().startswith("$cli")]
        assert commands, recipe
        for command in commands:
            argv = []
            for word in shlex.split(command):
                if word.startswith((">", "2>", "&")):
                    break
                if "[@]" not in word:
                    argv.append(stand_in.get(argv[-1] if argv else "", "x") if "$" in word else word)
            parser.parse_args(argv)  # exits (a test failure) on a flag the command does not take
