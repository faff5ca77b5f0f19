"""The codec: every message round-trips; every malformed frame is a ProtocolError naming the field."""
from __future__ import annotations

import random
from dataclasses import fields

import msgpack
import pytest

from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import (
    MAX_BRANCHES, MAX_FRAME_BYTES, MAX_TEXT_CHARS, MAX_TOKENS_PER_LIST, MESSAGE_TYPES,
    PROTOCOL_VERSION, Agreement, Cancel, Close, Done, Draft, Error, Generate, Hello, HelloAck, Open, Resync, Status,
    StatusQuery, Tokens, Verdict,
)

SAMPLES = [
    Generate(request_id="r1", prompt="", prompt_ids=[1, 2, 2**31 - 1], max_new_tokens=7,
             temperature=0.7, top_k=40, top_p=0.9, seed=1234, stop=["\n\n", "END"],
             stop_token_ids=[0, 2], stream=False),
    Cancel(request_id="r1"),
    Tokens(request_id="r1", token_ids=[5, 6], text="héllo ✓"),
    Done(request_id="r1", finish_reason="stop", prompt_tokens=3, completion_tokens=2, seed=-5,
         metrics={"acceptance_rate": 0.75, "tokens_per_round": 3.5}),
    Error(request_id="r1", code="invalid_request", message="empty prompt"),
    Hello(drafter_id="d0", vocab_size=49152, tokenizer_fingerprint="0f3a", max_draft_length=8, max_sessions=16),
    Draft(request_id="r1", base_length=10, base_tail=[7, 8, 9], trunk=[1, 2, 3],
          branches=[[4, 5], [], [6]]),
    HelloAck(vocab_size=49152),
    Open(request_id="r1", token_ids=[1, 2, 3], max_new_tokens=64, draft_length=0),
    Verdict(request_id="r1", committed_length=13, appended=[1, 2, 9], num_trunk_verified=3, num_trunk_accepted=2,
            trunk_predictions=[1, 2, 9, 4], branch_predictions=[[3], [4, 5]], draft_length=4),
    Agreement(request_id="r1", start=12, agreed=[1, 1, 0, 1]),
    Resync(request_id="r1"),
    Close(request_id="r1"),
    StatusQuery(request_id="q1"),
    Status(request_id="q1", running=2, queued=1, max_sessions=16, max_queue=64, is_drafter_present=False,
           num_drafter_handshakes=2, target_alone_s=3.5, num_rounds=40, num_drafts=30, num_draft_tokens=90,
           num_accepted_tokens=33, accepted_by_position=[20, 9, 4], generation_tokens=120,
           num_predraft_hits=12, num_predraft_misses=18, draft_wait_s=0.25),
]


def body_of(msg) -> dict:
    return {f.name: getattr(msg, f.name) for f in fields(msg)}


def frame(type_name: str, body, version=PROTOCOL_VERSION) -> bytes:
    return msgpack.packb({"v": version, "type": type_name, "body": body}, use_bin_type=True)


def with_field(msg, **changes) -> bytes:
    return frame(type(msg).__name__, {**body_of(msg), **changes})


def test_samples_cover_every_message_type():
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    decoded = decode(encode(msg))
    assert decoded == msg and type(decoded) is type(msg)


def test_round_trip_defaults_and_int_for_float():
    assert decode(encode(Generate(request_id="x"))) == Generate(request_id="x")
    decoded = decode(with_field(SAMPLES[0], temperature=1, top_p=1))
    assert decoded.temperature == 1.0 and type(decoded.temperature) is float


def test_envelope_is_a_versioned_map():
    envelope = msgpack.unpackb(encode(Cancel(request_id="r9")))
    assert envelope == {"v": PROTOCOL_VERSION, "type": "Cancel", "body": {"request_id": "r9"}}


GENERATE, TOKENS, DRAFT, DONE = SAMPLES[0], SAMPLES[2], SAMPLES[6], SAMPLES[3]
REJECTED = {
    "wrong type": (with_field(TOKENS, text=5), "Tokens.text"),
    "bool for int": (with_field(SAMPLES[8], max_new_tokens=True), "Open.max_new_tokens"),
    "bool token": (with_field(TOKENS, token_ids=[True]), "Tokens.token_ids[0]"),
    "float for int": (with_field(GENERATE, top_k=1.5), "Generate.top_k"),
    "nan float": (with_field(GENERATE, temperature=float("nan")), "Generate.temperature"),
    "none for int": (with_field(DONE, prompt_tokens=None), "Done.prompt_tokens"),
    "str for optional int": (with_field(GENERATE, seed="7"), "Generate.seed"),
    "str for list": (with_field(GENERATE, stop="END"), "Generate.stop"),
    "bad metric value": (with_field(DONE, metrics={"x": "fast"}), "Done.metrics"),
    "missing field": (frame("Draft", {k: v for k, v in body_of(DRAFT).items() if k != "base_length"}), "'base_length'"),
    "extra field": (with_field(TOKENS, logprobs=[0.1]), "'logprobs'"),
    "wrong version": (frame("Cancel", {"request_id": "r"}, version=1), "version 1"),
    "bool version": (frame("Cancel", {"request_id": "r"}, version=True), "version"),
    "unknown type": (frame("Nope", {}), "'Nope'"),
    "non-map body": (frame("Cancel", ["r"]), "Cancel: body"),
    "non-map envelope": (msgpack.packb([1, "Cancel", {}]), "envelope"),
    "extra envelope key": (msgpack.packb({"v": 1, "type": "Cancel", "body": {}, "x": 0}), "envelope"),
    "negative token": (with_field(DRAFT, trunk=[1, -1]), "Draft.trunk[1]"),
    "token >= 2**31": (with_field(DRAFT, base_tail=[2**31]), "Draft.base_tail[0]"),
    "nested negative token": (with_field(DRAFT, branches=[[1], [2, -3]]), "Draft.branches[1][1]"),
    "too many branches": (with_field(DRAFT, branches=[[1]] * (MAX_BRANCHES + 1)), "Draft.branches"),
    "oversize token list": (with_field(TOKENS, token_ids=[1] * (MAX_TOKENS_PER_LIST + 1)), "max_array_len"),
    "oversize text": (with_field(TOKENS, text="a" * (MAX_TEXT_CHARS + 1)), "Tokens.text"),
    "int map key": (msgpack.packb({"v": 1, "type": "Cancel", "body": {1: "r"}}), "undecodable"),
}


@pytest.mark.parametrize("data, names", REJECTED.values(), ids=REJECTED.keys())
def test_decode_rejects(data, names):
    with pytest.raises(ProtocolError, match=names.replace("[", r"\[").replace("(", r"\(")):
        decode(data)


def test_rejection_carries_request_id():
    with pytest.raises(ProtocolError) as info:
        decode(with_field(TOKENS, text=None))
    assert info.value.request_id == "r1"


@pytest.mark.parametrize("data", [
    b"\xdd\xff\xff\xff\xff",  # array32 declaring 2**32-1 items
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xdb\xff\xff\xff\xff",  # str32
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\x83\xa1v\x01\xa4type\xa6Tokens\xa4body\xdd\x7f\xff\xff\xff",  # huge array inside the envelope
    b"\x00" * (MAX_FRAME_BYTES + 1),
    b"",
    "not bytes",
], ids=["array32", "map32", "str32", "bin32", "nested-array32", "oversize-frame", "empty", "str"])
def test_decode_rejects_hostile_frames(data):
    with pytest.raises(ProtocolError):
        decode(data)


def test_truncated_frames_are_rejected():
    data = encode(SAMPLES[9])
    for end in range(len(data)):
        with pytest.raises(ProtocolError):
            decode(data[:end])
    with pytest.raises(ProtocolError, match="ExtraData"):
        decode(data + b"\x00")


def test_garbage_bytes_are_rejected():
    rng = random.Random(1234)
    for _ in range(200):
        with pytest.raises(ProtocolError):
            decode(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 48))))


def test_mutated_frames_decode_or_raise_protocol_error():
    rng = random.Random(99)
    data = encode(SAMPLES[6])
    for _ in range(300):
        mutated = bytearray(data)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            assert type(decode(bytes(mutated))) in MESSAGE_TYPES.values()
        except ProtocolError:
            pass


@pytest.mark.parametrize("msg, names", [
    ({"request_id": "r"}, "not a wire message"),
    (Tokens(request_id="r", token_ids=(1, 2), text=""), "Tokens.token_ids"),
    (Tokens(request_id="r", token_ids=[-1], text=""), r"Tokens.token_ids\[0\]"),
    (Done(request_id="r", finish_reason="stop", prompt_tokens=1, completion_tokens=1,
          metrics={"x": float("inf")}), "Done.metrics"),
], ids=["not-a-message", "tuple", "negative-token", "inf-metric"])
def test_encode_rejects_invalid_messages(msg, names):
    with pytest.raises(ProtocolError, match=names):
        encode(msg)
