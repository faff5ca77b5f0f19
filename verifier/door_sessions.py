"""The vLLM door's sessions, one per row of vLLM's batch, each found again by its text.

vLLM passes no request ids, so a row is matched to the session whose tokens are a prefix of the
row's committed tokens (rows with equal text draft alike anyway); a row no session matches is
opened, a session no row matched has ended. Sessions are keyed by their first MATCH_KEY tokens,
so a step costs what its rows cost, not what every session's text costs. Torch-free."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from protocol.messages import Draft
from protocol.prompt_lookup import NgramIndex
from verifier.acceptance import OfferedLookups
from verifier.config import VerifierConfig

MATCH_KEY = 16  # leading tokens that key the sessions (a row is then checked in full)
LOOKUP = VerifierConfig()  # the prompt lookup's n-grams and length, as the verifier's own


@dataclass
class Session:
    request_id: str
    tokens: list[int]
    key: tuple[int, ...] = ()  # its first MATCH_KEY tokens (fewer for a shorter prompt)
    asked: int = 0  # draft tokens asked for the round that starts at len(tokens); -1: not opened at the drafter
    proposed: list[int] = field(default_factory=list)  # what vLLM was given to verify
    is_drafted: bool | None = None  # proposed came from the drafter ready (True) or waited for (False); None: a lookup
    wait_s: float = 0.0  # how long the step that proposed it waited for drafts
    drafts: dict[int, Draft] = field(default_factory=dict)  # base length -> the latest draft there
    is_new: bool = True  # matched for the first time this step: vLLM's step included its prefill
    index: NgramIndex = field(default_factory=lambda: NgramIndex(LOOKUP.lookup_ngram, LOOKUP.lookup_min_ngram))
    lookup: list[int] = field(default_factory=list)  # the prompt lookup at the committed end, this step
    offered: OfferedLookups = field(default_factory=OfferedLookups)


class RowSessions:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.by_key: dict[tuple[int, ...], list[str]] = {}
        self.key_lengths: set[int] = set()  # the lengths of the keys in by_key

    def match(self, rows: list[list[int] | None]) -> tuple[list[Session | None], list[str]]:
        """Each row's session (opened where none matches: is_new, asked -1), and the request ids
        of the sessions no row matched, removed here."""
        claimed: set[str] = set()
        matched: list[Session | None] = []
        for row in rows:
            if row is None:
                matched.append(None)
                continue
            keys = {tuple(row[:n]) for n in self.key_lengths}
            candidates = [self.sessions[r] for key in keys for r in self.by_key.get(key, ())
                          if r not in claimed and len(self.sessions[r].tokens) <= len(row)]
            found = max((s for s in candidates if row[: len(s.tokens)] == s.tokens), key=lambda s: len(s.tokens),
                        default=None)
            if found is None:
                found = self.open(row)
            claimed.add(found.request_id)
            matched.append(found)
        ended = [r for r in self.sessions if r not in claimed]
        for request_id in ended:
            self.remove(request_id)
        return matched, ended

    def open(self, row: list[int]) -> Session:
        session = Session(uuid.uuid4().hex, list(row), tuple(row[:MATCH_KEY]), asked=-1)
        self.sessions[session.request_id] = session
        self.by_key.setdefault(session.key, []).append(session.request_id)
        self.key_lengths = {len(key) for key in self.by_key}
        return session

    def remove(self, request_id: str) -> None:
        session = self.sessions.pop(request_id)
        self.by_key[session.key].remove(request_id)
        if not self.by_key[session.key]:
            del self.by_key[session.key]
            self.key_lengths = {len(key) for key in self.by_key}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n
