"""`python -m ouroboros.flag_doc > docs/flags.md`: every command's flags, from the parser itself (the
knobs' own help and defaults), so the reference cannot drift from the code; a test compares."""
from __future__ import annotations

import argparse

from ouroboros.cli import build_parser

HEADER = """# Every flag

Generated from the command-line parser by `python -m ouroboros.flag_doc > docs/flags.md`
(`tests/ouroboros/test_docs.py` fails when this file and the parser disagree). The algorithm's and
the verifier's knobs are declared once, in `drafter/config.py` and `verifier/config.py`.
"""


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order `ouroboros --help` lists them."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    return [(name, helps.get(name, ""), command) for name, command in sub.choices.items()]


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(action.default, list) and not action.default:
        return ""
    return f"`{action.default}`"


def _row(action: argparse.Action) -> str:
    names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}` (positional)"
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        names += " {" + ", ".join(str(c) for c in action.choices) + "}"
    text = (action.help or "").replace("|", "\\|").replace("\n", " ")
    return f"| {names} | {_default(action)} | {text} |"


def flag_doc() -> str:
    lines = [HEADER]
    for name, help_text, command in _commands(build_parser()):
        lines += [f"## `ouroboros {name}`", "", help_text, "", "| flag | default | what it does |", "|---|---|---|"]
        lines += [_row(action) for action in command._actions if not isinstance(action, argparse._HelpAction)]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(flag_doc(), end="")
