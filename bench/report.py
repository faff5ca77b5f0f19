"""`ouroboros bench --report FILE.md`: the run's table as a section of a Markdown file, with its
command, commit and machine, and its bar chart beside the file. A later run of the same command
replaces its own section, so the file holds the current figures only."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

HEADER = """# Benchmarks

Each section is written by the command it names (`ouroboros bench ... --report
docs/benchmarks.md`), which replaces its own section when run again: these are the current
figures, each from one run, contenders interleaved prompt by prompt on one machine.
"""


def commit() -> str:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() or "unknown"


def command_line(argv: list[str]) -> str:
    """The command as typed, without the --report, --json and --plot outputs."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--report", "--json", "--plot"):
            skip = True
            continue
        if not arg.startswith(("--report=", "--json=", "--plot=")):
            kept.append(arg)
    return "ouroboros " + shlex.join(kept)


def section(report: dict, command: str, chart: str) -> str:
    rows = [f"| contender | tokens/s | vs {report.get('reference', 'target')} | tokens per pass | acceptance | "
            "pre-draft hits | draft wait (ms) | identical |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        cells = ["-" if r.get(key) is None else f"{r[key]:.{digits}f}" for key, digits in (
            ("mean_accepted", 2), ("acceptance_rate", 2), ("predraft_hit_rate", 2), ("mean_draft_wait_ms", 1))]
        rows.append(f"| {r['name']} | {r['tokens_per_s']:.2f} | {r['speedup']:.2f}x | {' | '.join(cells)} | "
                    f"{r['identical']} |")
    title = f"{report['prompts']} prompts, {report['max_new_tokens']} new tokens, {report['device']}"
    return "\n".join([f"`{command}`", "", f"{title}; commit {commit()}.", "", *rows, "", f"![tokens/s]({chart})", ""])


def write_report(path: str, report: dict, plot) -> Path:
    """Write (or replace) this command's section in `path`; its chart goes beside it."""
    file = Path(path)
    command = command_line(sys.argv[1:])
    key = re.sub(r"[^a-z0-9]+", "-", command.lower()).strip("-")[:80]
    chart = file.with_name(f"{file.stem}-{key}.png")
    file.parent.mkdir(parents=True, exist_ok=True)
    plot(report, str(chart))
    body = f"<!-- bench: {command} -->\n{section(report, command, chart.name)}<!-- /bench -->\n"
    text = file.read_text() if file.exists() else HEADER
    begin = text.find(f"<!-- bench: {command} -->")
    if begin >= 0:
        end = text.index("<!-- /bench -->", begin) + len("<!-- /bench -->\n")
        text = text[:begin] + body + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + body
    file.write_text(text)
    return file
