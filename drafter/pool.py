"""The phrase pool: key token -> most-recent-last phrases of N-1 tokens, at most G per key."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

Phrase = tuple[int, ...]


class PhrasePool:
    """Ordered phrases per key token. Inserting an existing phrase moves it to the end (most
    recent); a full list drops its oldest. Shared across requests: the paper's warm start."""

    def __init__(self, phrase_length: int, max_per_key: int) -> None:
        if phrase_length < 1 or max_per_key < 1:
            raise ValueError("phrase_length and max_per_key must be >= 1")
        self.phrase_length = phrase_length
        self.max_per_key = max_per_key
        self._phrases: dict[int, OrderedDict[Phrase, None]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._phrases.values())

    def add(self, key: int, phrase: Sequence[int]) -> None:
        """Insert one phrase; phrases shorter than phrase_length are ignored, longer are cut."""
        if len(phrase) < self.phrase_length:
            return
        item = tuple(int(t) for t in phrase[: self.phrase_length])
        bucket = self._phrases.setdefault(int(key), OrderedDict())
        if item in bucket:
            bucket.move_to_end(item)
            return
        bucket[item] = None
        if len(bucket) > self.max_per_key:
            bucket.popitem(last=False)

    def add_from_text(self, tokens: Sequence[int], start: int = 0) -> None:
        """Harvest every n-gram whose phrase ends at or after `start` (prompt lookup as a source)."""
        n = self.phrase_length
        for i in range(max(0, start - n), len(tokens) - n):
            self.add(tokens[i], tokens[i + 1 : i + 1 + n])

    def phrases(self, key: int) -> list[Phrase]:
        """All phrases under `key`, oldest first."""
        bucket = self._phrases.get(int(key))
        return list(bucket) if bucket else []

    def most_recent(self, key: int, count: int) -> list[Phrase]:
        """Up to `count` phrases under `key`, most recent first."""
        bucket = self._phrases.get(int(key))
        if not bucket or count <= 0:
            return []
        out: list[Phrase] = []
        for phrase in reversed(bucket):
            out.append(phrase)
            if len(out) == count:
                break
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the pool as JSON (atomically: a temp file then rename)."""
        data = {
            "phrase_length": self.phrase_length,
            "max_per_key": self.max_per_key,
            "entries": [[key, [list(p) for p in bucket]] for key, bucket in self._phrases.items()],
        }
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "PhrasePool":
        """Read a pool written by save(); a malformed file raises ValueError naming it."""
        try:
            data = json.loads(Path(path).read_text())
            pool = cls(int(data["phrase_length"]), int(data["max_per_key"]))
            for key, phrases in data["entries"]:
                for phrase in phrases:
                    pool.add(int(key), [int(t) for t in phrase])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot load phrase pool from {path}: {exc}") from exc
        return pool
