"""Wire types: one frozen dataclass per message, plus the protocol version and size limits."""
from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_VERSION = 7  # 2: Hello's tokenizer fingerprint, Error(refused), Verdict's counts, Resync;
# 3: Verdict.wants_draft; 4: Open.wants_draft; 5: the verifier decides each draft's length
# (Open/Verdict.draft_length, Hello.max_draft_length), Agreement; 6: Status's pre-draft counters;
# 7: Hello.max_sessions

# Limits the codec enforces on every decoded message.
MAX_TOKENS_PER_LIST = 65536  # any list on the wire, except the outer list of branches
MAX_BRANCHES = 64  # outer list of a list[list[int]] (phrase branches and their predictions)
MAX_TEXT_CHARS = 1_000_000  # any single string
MAX_METRICS = 256  # entries in a dict[str, float]
MAX_FRAME_BYTES = 8 * 1024 * 1024  # one encoded message
TOKEN_ID_LIMIT = 2**31  # every list[int] on the wire holds token ids in [0, TOKEN_ID_LIMIT)


class ErrorCode:
    """Values of Error.code."""

    INVALID_REQUEST = "invalid_request"  # failed validate_generate
    PROTOCOL = "protocol_error"  # undecodable or malformed message
    OVERLOADED = "overloaded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    REFUSED = "refused"  # to a drafter: this verifier will not take its drafts (the message says why)


class FinishReason:
    """Values of Done.finish_reason."""

    LENGTH = "length"  # max_new_tokens reached
    STOP = "stop"  # a stop string or stop token id was produced
    CANCELLED = "cancelled"


# ---- client -> verifier ----

@dataclass(frozen=True, slots=True, kw_only=True)
class Generate:
    request_id: str
    prompt: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    # False: the server may send all tokens in one Tokens message before Done.
    stream: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusQuery:
    """Asks the verifier for a Status (answered at once, between passes)."""

    request_id: str


# ---- verifier -> client ----

@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """The verifier's state and its speculative counters since it started (vLLM's meanings:
    a draft is a round that verified drafted tokens; accepted tokens are drafted tokens kept)."""

    request_id: str
    running: int
    queued: int
    max_sessions: int
    max_queue: int
    is_drafter_present: bool  # False: the target decodes alone
    num_drafter_handshakes: int  # drafters that said Hello (1 + restarts, once one came)
    target_alone_s: float  # seconds of target passes run while no drafter was present
    num_rounds: int  # request-rounds verified, with or without a draft
    num_drafts: int
    num_draft_tokens: int
    num_accepted_tokens: int
    accepted_by_position: list[int]  # [k]: drafts whose token k+1 was accepted
    generation_tokens: int  # tokens committed for clients
    num_predraft_hits: int  # drafts verified that were drafted ahead (ready when their verdict came)
    num_predraft_misses: int  # drafts verified that were drafted after their verdict came
    draft_wait_s: float  # seconds the target stood idle before rounds that verified a draft

@dataclass(frozen=True, slots=True, kw_only=True)
class Tokens:
    request_id: str
    token_ids: list[int]
    text: str  # text delta for these tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    request_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seed: int | None = None  # the seed actually used (sampling)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    request_id: str
    code: str
    message: str


# ---- drafter -> verifier ----

@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    drafter_id: str
    vocab_size: int  # rows of the draft's output layer (a pair may differ by padding rows)
    tokenizer_fingerprint: str  # models.loading.tokenizer_fingerprint: equal means one token space
    max_draft_length: int  # the longest trunk it drafts (--gamma): the verifier asks for no more
    max_sessions: int  # requests it keeps at once (its KV slots): the verifier opens no more there


@dataclass(frozen=True, slots=True, kw_only=True)
class Draft:
    request_id: str
    base_length: int  # committed length the draft was built on
    base_tail: list[int]  # last few committed tokens of that base
    trunk: list[int]
    branches: list[list[int]]
    drafted_ahead: bool = False  # drafting began before its base was verified (the overlap at work)


@dataclass(frozen=True, slots=True, kw_only=True)
class Agreement:
    """Teacher-forced agreement on committed text: agreed[i] is 1 when the draft's greedy token
    for committed position start + i, given the committed tokens before it, is the committed
    one. A greedy trunk drafted at position p would have had exactly its run of ones from p
    accepted, so this is the draft's acceptance even in rounds where no draft was verified."""

    request_id: str
    start: int
    agreed: list[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Resync:
    """The drafter lost step with a request (a verdict it cannot place): the verifier answers
    with an Open carrying the committed tokens."""

    request_id: str


# ---- verifier -> drafter ----

@dataclass(frozen=True, slots=True, kw_only=True)
class HelloAck:
    vocab_size: int  # rows of the target's output layer: the drafter proposes only ids below it


@dataclass(frozen=True, slots=True, kw_only=True)
class Open:
    request_id: str
    token_ids: list[int]
    max_new_tokens: int
    draft_length: int  # as in Verdict: trunk tokens to draft for the first round (0: rest)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """One verified round. The counts say what the target actually checked, so the drafter
    never infers it: the verifier may cut a trunk (pass width, budget, --max-draft-tokens)."""

    request_id: str
    committed_length: int
    appended: list[int]  # accepted tokens + the correction or bonus token
    num_trunk_verified: int  # leading trunk tokens of the draft (rebased to this round) put in the pass
    num_trunk_accepted: int
    trunk_predictions: list[int]  # the target's argmax at the root and after each verified trunk token
    branch_predictions: list[list[int]]  # after each token of each verified branch
    # trunk tokens to draft for the next round (verifier.speculation); 0: no round waits for
    # this request's drafts, so the drafter only keeps its cache and its Agreement in step
    draft_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    request_id: str


Message = (
    Generate | Cancel | StatusQuery | Tokens | Done | Error | Status | Hello | Draft | Agreement | Resync | HelloAck | Open
    | Verdict | Close
)

MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Generate, Cancel, StatusQuery, Tokens, Done, Error, Status, Hello, Draft, Agreement, Resync, HelloAck, Open,
                Verdict, Close)
}
