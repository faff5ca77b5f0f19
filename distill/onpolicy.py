"""`ouroboros draft-data`: the target's own continuations of varied prompts, as training text.

A draft is judged on what the target writes, and the target writes prose and markdown around its
code that library sources do not hold (DistillSpec: on-policy data is what aligns a draft). So
this asks the target itself: prompts cut from installed packages' sources and docs (code,
prose) and chat requests of seven kinds (distill.chat_requests), continued greedily and by sampling. Each
sample is written as one text file (prompt + continuation) that `train-draft --data DIR` reads.
Appends: rerunning adds samples after the ones already there, with a new seed per batch."""
from __future__ import annotations

import argparse
import random
import re
import sys
import sysconfig
import time
from pathlib import Path

import torch
from tqdm import tqdm

from distill.chat_requests import chat_request, doc_paragraphs, docstring_sentences
from distill.flags import DEFAULT_KINDS, KINDS
from distill.data import EXCLUDED_PACKAGES, extra_sources, read_text, site_package_sources
from models.loading import default_device, load_model, load_tokenizer

PROSE_SUFFIXES = (".md", ".rst", ".txt")
MIN_PROMPT_CHARS = 120
DEF_LINE = re.compile(r"^\s*(def |class |async def |@|#)|\"\"\"\s*$")  # a def, a comment, a docstring's end


def prose_sources() -> list[Path]:
    """Markdown/reST/text files of the installed packages (not HumanEval, not this repository)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    return [p for p in purelib.rglob("*") if p.suffix in PROSE_SUFFIXES and p.is_file()
            and not any(part in EXCLUDED_PACKAGES for part in p.relative_to(purelib).parts[:1])]


def code_prompt(text: str, rng: random.Random, max_chars: int) -> str | None:
    """Source up to and including a def/class/comment line or a docstring's end, at most max_chars long."""
    lines = text.splitlines(keepends=True)
    anchors = [i for i, line in enumerate(lines) if DEF_LINE.match(line)]
    if not anchors:
        return None
    end = rng.choice(anchors) + 1
    prompt = "".join(lines[:end])[-max_chars:]
    return prompt if len(prompt) >= MIN_PROMPT_CHARS else None


def prose_prompt(text: str, rng: random.Random, max_chars: int) -> str | None:
    """Text up to the end of a paragraph or heading."""
    cuts = [m.end() for m in re.finditer(r"\n\n|\n#+ [^\n]*\n", text)]
    if not cuts:
        return None
    prompt = text[:rng.choice(cuts)][-max_chars:]
    return prompt if len(prompt) >= MIN_PROMPT_CHARS else None


def chat_prompt(rng: random.Random, code_files: list[Path], prose_files: list[Path], tokenizer) -> str | None:
    """A user request of one of distill.chat_requests.KINDS, in the tokenizer's chat template;
    texts to summarize come from a prose file, code requests may use a code file's docstrings."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    paragraphs = doc_paragraphs(read_text(rng.choice(prose_files))) if prose_files else []
    docstrings = docstring_sentences(read_text(rng.choice(code_files))) if code_files else []
    _, request = chat_request(rng, paragraphs, docstrings)
    messages = [{"role": "user", "content": request}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def make_prompts(rng: random.Random, code_files: list[Path], prose_files: list[Path], tokenizer, count: int,
                 max_chars: int, kinds: dict[str, float] = DEFAULT_KINDS) -> list[tuple[str, str]]:
    """One batch of `count` prompts, all of one kind drawn by the --kinds weights: a batch is
    padded to its longest prompt, so short chat requests are not padded to long code cuts."""
    weights = [kinds.get(k, 0.0) * (0.0 if k == "prose" and not prose_files else 1.0) for k in KINDS]
    if sum(weights) <= 0:
        raise ValueError("no prompt source for the kinds asked (prose needs installed packages' docs)")
    kind = rng.choices(KINDS, weights=weights)[0]
    prompts = []
    while len(prompts) < count:
        if kind == "code":
            prompt = code_prompt(read_text(rng.choice(code_files)), rng, max_chars)
        elif kind == "prose":
            prompt = prose_prompt(read_text(rng.choice(prose_files)), rng, max_chars)
        else:
            prompt = chat_prompt(rng, code_files, prose_files, tokenizer)
        if prompt:
            prompts.append((kind, prompt))
    return prompts


@torch.inference_mode()
def continue_batch(target, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float,
                   seed: int) -> list[str]:
    """The target's continuations (greedy at temperature 0, else sampled), left-padded batch."""
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True).to(target.device)
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False}
    out = target.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad,
                          eos_token_id=tokenizer.eos_token_id, **sampling)
    texts = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        if tokenizer.eos_token_id in row:  # the end of the text, kept; what follows is padding
            row = row[:row.index(tokenizer.eos_token_id) + 1]
        texts.append(tokenizer.decode(row, skip_special_tokens=False))
    return texts


def run_draft_data(args: argparse.Namespace) -> int:
    checks = {"--minutes must be > 0": args.minutes > 0, "--batch-size must be >= 1": args.batch_size >= 1,
              "--max-new-tokens must be >= 1": args.max_new_tokens >= 1,
              "--sampled-fraction must be within 0..1": 0 <= args.sampled_fraction <= 1,
              "--temperature must be > 0": args.temperature > 0,
              "--samples must be >= 1": args.samples is None or args.samples >= 1}
    for message, is_ok in checks.items():
        if not is_ok:
            raise ValueError(message)
    torch.set_num_threads(args.threads)
    args.device = default_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_model(args.target, args.device, args.dtype).requires_grad_(False)
    tokenizer = load_tokenizer(args.target)
    code_files = site_package_sources() + [p for p in extra_sources(args.data) if p.suffix == ".py"]
    prose_files = prose_sources() + [p for p in extra_sources(args.data) if p.suffix in PROSE_SUFFIXES]
    print(f"prompt sources: {len(code_files)} code files, {len(prose_files)} prose files", file=sys.stderr)
    number = len(list(out.glob("sample-*.txt")))
    batch_index = number // args.batch_size
    deadline = time.monotonic() + args.minutes * 60
    bar = tqdm(total=int(args.minutes * 60), unit="s", desc="draft-data", file=sys.stderr)
    start, num_tokens, first = time.monotonic(), 0, number
    while time.monotonic() < deadline and (args.samples is None or number - first < args.samples):
        rng = random.Random(f"{args.seed}:{batch_index}")
        prompts = make_prompts(rng, code_files, prose_files, tokenizer, args.batch_size, args.max_prompt_chars,
                               args.kinds)
        temperature = args.temperature if rng.random() < args.sampled_fraction else 0.0
        texts = continue_batch(target, tokenizer, [p for _, p in prompts], args.max_new_tokens, temperature,
                               seed=args.seed * 1_000_003 + batch_index)
        for (kind, prompt), text in zip(prompts, texts):
            (out / f"sample-{number:07d}.txt").write_text(prompt + text)
            number += 1
            num_tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        batch_index += 1
        elapsed = time.monotonic() - start
        bar.update(min(int(elapsed), bar.total) - bar.n)
        bar.set_postfix(samples=number, tok_s=f"{num_tokens / elapsed:.0f}")
    bar.close()
    print(f"{number} samples in {out} ({num_tokens} new continuation tokens this run)")
    return 0
