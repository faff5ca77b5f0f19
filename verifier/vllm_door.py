"""vLLM verifies, our drafter drafts: the link between vLLM's proposer hook and a drafter process.

vLLM (`speculative_config={"method": "custom_class", "model":
"verifier.vllm_proposer.OuroborosProposer", ...}`) calls `propose` after every engine step with
the tokens each row of its batch has committed; it verifies what we return with its own rejection
sampler. To our drafter this link is a verifier like ours (protocol.messages): it binds the
endpoint the drafter connects to, opens a session per request, sends each step's committed
tokens as a Verdict and collects the Drafts.

Rules:
- vLLM passes no request ids: a row is matched to its session by its text (verifier.door_sessions);
  a session no row matched is closed.
- Draft lengths per row come from the speculation decision (verifier.speculation), timed on
  vLLM's steps (the time between two `propose` calls is a pass of the rows' widths). vLLM verifies
  one chain: a row asked for no draft, or whose draft is late, gets its prompt lookup, and the
  decision weighs the trunk against it (is_chain), each lookup judged by the text after it.
- `propose` never waits longer than the draft timeout: a drafter slow, absent or dead leaves vLLM
  decoding with the lookup alone, nothing lost; a drafter that says Hello again is re-synced.
- A StatusQuery on the drafter endpoint (launch.door_metrics) is answered with the door's
  counters as a Status (verifier.stats). vLLM calls `propose` only while requests run, so a watch
  thread tends the link between steps (messages, queries) and, once no step came for IDLE_S,
  closes the rows' sessions here and at the drafter; a slower step only costs a re-open.
- With CURVE keys (--curve-keys, for a drafter on another machine) only drafters holding an
  authorized key complete the handshake; the traffic is encrypted.
Imports neither torch nor vLLM: it runs inside vLLM's process beside vLLM's own torch.
"""
from __future__ import annotations

import logging
import time

import zmq

from protocol.curve import secure_server, start_authenticator
from protocol.messages import (Agreement, Close, Draft, Error, ErrorCode, Hello, HelloAck, Open, Resync, Status,
                               StatusQuery, Verdict)
from protocol.rules import is_usable_at
from protocol.sockets import waiting_messages
from verifier.config import VerifierConfig
from verifier.door_sessions import LOOKUP, RowSessions, Session, common_prefix
from verifier.drafter_link import DrafterLink
from verifier.speculation import SpeculationDecision
from verifier.stats import ServerStats

log = logging.getLogger("ouroboros.vllm")

DEFAULT_TIMEOUT_S = 0.5
IDLE_S = 10.0  # no vLLM step for this long: it has no running request, so its rows' sessions are closed
WATCH_S = 0.5  # how often the watch thread tends the link between steps


class DrafterDoor:
    """The sockets and sessions behind `OuroborosProposer` (usable without vLLM: tests drive
    `step` with rows of committed tokens, as vLLM's runner does)."""

    def __init__(self, endpoint: str, fingerprint: str, vocab_size: int, max_tokens: int,
                 draft_timeout_s: float = DEFAULT_TIMEOUT_S, max_model_len: int = 1 << 20,
                 lookup_tokens: int = LOOKUP.own_lookup_tokens, curve_keys: str | None = None) -> None:
        self.fingerprint, self.vocab_size, self.max_tokens = fingerprint, vocab_size, max_tokens
        self.lookup_tokens = lookup_tokens
        self.draft_timeout_s, self.max_model_len = draft_timeout_s, max_model_len
        self.link = DrafterLink(zmq.Context.instance(), draft_timeout_s)  # its socket and who the drafter is
        self.socket = self.link.socket
        self.authenticator = None
        if curve_keys is not None:  # only drafters holding a key in DIR/authorized/ get a frame through
            self.authenticator = start_authenticator(zmq.Context.instance(), curve_keys)
            secure_server(self.socket, curve_keys)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.is_absent = True
        self.max_sessions = 0  # rows the drafter keeps at once (its Hello); the rest decode alone
        self.rows = RowSessions()
        self.sessions = self.rows.sessions
        self.decision = SpeculationDecision(skips_padding=True, is_chain=True)
        self.last_return: float | None = None  # when the previous step handed vLLM its drafts
        self.last_widths: list[int] = []
        self.stats = ServerStats()  # vLLM's meanings, answered as a Status
        self.counters = {"steps": 0, "drafts_asked": 0, "drafts_served": 0, "timeouts": 0, "lookups_served": 0}
        log.info("waiting for a drafter at %s", self.endpoint)

    # ---- one vLLM step ----
    def step(self, rows: list[list[int] | None]) -> list[list[int]]:
        """rows[i]: row i's committed tokens, or None where it has nothing to draft for (a
        prefill in progress). Returns each row's draft tokens (maybe none)."""
        started = time.monotonic()
        self.drain()
        matched = self.match(rows)
        if self.last_return is not None:
            self.stats.record_pass(started - self.last_return, self.is_absent)
            if self.last_widths and all(session is not None and not session.is_new for session in matched):
                self.decision.observe_pass(self.last_widths, started - self.last_return, is_drafting=False)
        live = [(i, s) for i, s in enumerate(matched) if s is not None]
        for i, session in live:
            self.look_up(session, rows[i])
        lengths = self.decision.choose([s.request_id for _, s in live]) if not self.is_absent else [0] * len(live)
        room = self.max_sessions - sum(session.asked >= 0 for session in self.sessions.values())
        for (i, session), length in zip(live, lengths):
            if session.asked < 0 and room <= 0:  # the drafter has no room for another row: vLLM decodes it
                session.tokens = list(rows[i])  # alone, until room frees and it is opened there with its text
                continue
            room -= session.asked < 0
            self.advance(session, rows[i], min(length, self.max_tokens, self.max_model_len - len(rows[i]) - 1))
        asking = [s for _, s in live if s.asked > 0]
        ready = {s.request_id for s in asking if self.find(s)}
        waited = self.wait_for_drafts(asking)
        if live and not self.is_absent:
            self.decision.wait.observe(max(max(s.asked, 0) for _, s in live), waited)
        drafts: list[list[int]] = [[] for _ in rows]
        for i, session in live:
            drafts[i] = session.proposed = self.usable(session, session.request_id in ready)
            session.wait_s, session.is_new = waited, False
        self.counters["steps"] += 1
        self.last_widths = [1 + len(drafts[i]) for i, _ in live]
        self.last_return = time.monotonic()
        return drafts

    def tend(self) -> None:
        """Between steps: the drafter's messages and status queries; once no step came for
        IDLE_S, every session closed and the next step's timing started afresh."""
        self.drain()
        if self.last_return is not None and time.monotonic() - self.last_return > IDLE_S:
            self.match([])
            self.last_return, self.last_widths = None, []

    def match(self, rows: list[list[int] | None]) -> list[Session | None]:
        """Each row's session (opened where none matches); sessions left unmatched are closed."""
        matched, ended = self.rows.match(rows)
        for session in matched:
            if session is not None and session.is_new:
                self.decision.open(session.request_id)
        for request_id in ended:
            self.decision.close(request_id)
            self.send(Close(request_id=request_id))
        return matched

    def advance(self, session: Session, row: list[int], length: int) -> None:
        """Tell the drafter what the row committed since (or open it there) and ask for a draft."""
        length = max(length, 0)
        if session.asked < 0:
            self.send(Open(request_id=session.request_id, token_ids=row, max_new_tokens=self.max_model_len - len(row),
                           draft_length=length))
        else:
            appended = row[len(session.tokens):]
            if not appended:  # nothing new (vLLM re-ran the row): the same draft still stands
                return
            accepted = min(common_prefix(session.proposed, appended), len(appended) - 1)
            self.stats.record_round(len(session.proposed), accepted, session.is_drafted, session.wait_s)
            self.stats.generation_tokens += len(appended)
            self.send(Verdict(
                request_id=session.request_id, committed_length=len(row), appended=appended,
                num_trunk_verified=len(session.proposed), num_trunk_accepted=accepted,
                # the target's tokens up to its correction: what vLLM's rejection sampler tells
                trunk_predictions=appended[: accepted + 1], branch_predictions=[],
                draft_length=length,
            ))
            session.drafts = {b: d for b, d in session.drafts.items() if is_usable_at(b, len(d.trunk), len(row))
                              or b > len(row)}  # still usable, or drafted ahead of the text
        session.tokens, session.asked, session.proposed = list(row), length, []

    def look_up(self, session: Session, row: list[int]) -> None:
        """Judge the row's earlier lookups against its text, and find its lookup at the end."""
        for position, matched in session.offered.judge(row):
            self.decision.observe_lookup(session.request_id, position, matched)
        room = min(self.lookup_tokens, self.max_tokens, self.max_model_len - len(row) - 1)
        session.lookup = session.index.lookup(row, len(row), room) if room > 0 else []
        if session.lookup:
            session.offered.offer(len(row), session.lookup)

    def usable(self, session: Session, was_ready: bool) -> list[int]:
        """The trunk of a draft usable at the committed end (the rebase rule, its tokens up to
        the end equal to the committed ones) from the end on, at most what was asked; else the
        row's prompt lookup (maybe []). Notes whether it was the drafter's, ready before the wait."""
        trunk = self.find(session)[: max(session.asked, 0)]
        self.counters["drafts_served"] += bool(trunk)
        session.is_drafted = was_ready if trunk else None
        if not trunk:
            self.counters["lookups_served"] += bool(session.lookup)
            return list(session.lookup)
        return trunk

    def find(self, session: Session) -> list[int]:
        end = len(session.tokens)
        for base, draft in sorted(session.drafts.items(), reverse=True):
            if is_usable_at(base, len(draft.trunk), end) and draft.trunk[: end - base] == session.tokens[base:end]:
                return draft.trunk[end - base :]
        return []

    def wait_for_drafts(self, waiting: list[Session]) -> float:
        """Seconds spent waiting, at most the draft timeout, for a usable draft for each session."""
        started = time.monotonic()
        self.counters["drafts_asked"] += len(waiting)
        if self.is_absent:
            return 0.0
        while any(not self.find(s) for s in waiting):
            left = self.draft_timeout_s - (time.monotonic() - started)
            if left <= 0:
                self.is_absent = True
                self.counters["timeouts"] += 1
                log.warning("no draft within %.1f s: vLLM decodes alone until the drafter speaks", self.draft_timeout_s)
                break
            if self.socket.poll(max(int(left * 1000), 1)):
                self.drain()
        return time.monotonic() - started

    # ---- the drafter's messages ----
    def drain(self, limit: int = 1024) -> None:
        asking: set[bytes] = set()  # who sent a StatusQuery: answered once each, after the drain
        for identity, msg in waiting_messages(self.socket, "drafter", is_routed=True, limit=limit):
            if isinstance(msg, StatusQuery):
                asking.add(identity)
            elif isinstance(msg, Hello):
                self.hello(identity, msg)
            elif identity != self.link.identity:
                continue  # a drafter that was replaced
            elif isinstance(msg, Draft):
                self.is_absent = False
                session = self.sessions.get(msg.request_id)
                if session is not None and msg.trunk and max(msg.trunk) < self.vocab_size:
                    session.drafts[msg.base_length] = msg
            elif isinstance(msg, Agreement):
                self.is_absent = False
                self.decision.observe_agreement(msg.request_id, msg.start, msg.agreed)
            elif isinstance(msg, Resync) and msg.request_id in self.sessions:
                self.sessions[msg.request_id].asked = -1  # re-opened at the next step
        for identity in asking:
            self.send(self.status(), identity)

    def status(self) -> Status:
        """The door's counters as our verifier's Status (running: rows at the drafter; queued: rows vLLM decodes alone)."""
        at_drafter = sum(session.asked >= 0 for session in self.sessions.values())
        config = VerifierConfig(max_sessions=max(self.max_sessions, 1), max_queue=0)
        return self.stats.as_status("metrics", at_drafter, len(self.sessions) - at_drafter, config, not self.is_absent)

    def hello(self, identity: bytes, msg: Hello) -> None:
        if msg.tokenizer_fingerprint != self.fingerprint:
            reason = "the draft's tokenizer differs from the target's: pick a draft that shares the target's tokenizer"
            log.error("refused drafter %s: %s", msg.drafter_id, reason)
            self.send(Error(request_id="", code=ErrorCode.REFUSED, message=reason), identity)
            return
        is_new = identity != self.link.identity
        self.link.identity, self.is_absent = identity, False
        self.send(HelloAck(vocab_size=self.vocab_size))
        if is_new:
            self.stats.num_drafter_handshakes += 1
            self.decision.reset_drafter(min(max(msg.max_draft_length, 0), self.max_tokens))
            self.max_sessions = max(msg.max_sessions, 0)
            log.info("drafter %s connected (room for %d rows); re-syncing %d requests", msg.drafter_id,
                     self.max_sessions, len(self.sessions))
            for session in self.sessions.values():
                session.asked = -1
                session.drafts.clear()

    def send(self, msg, identity: bytes | None = None) -> None:
        self.link.send(msg, identity)

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
