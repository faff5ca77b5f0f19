"""The one msgpack codec: encode(msg) -> bytes and a strict, type-hint-driven decode(bytes) -> msg."""
# Envelope, a msgpack map with exactly these keys:
#     {"v": PROTOCOL_VERSION, "type": "<message class name>", "body": {field: value, ...}}
# The body holds every field of the dataclass, no more and no fewer. Values are checked, on
# encode and on decode, by checkers compiled once from the dataclass type hints (_compile).
from __future__ import annotations

import math
import reprlib
import types
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from typing import Any, Union, get_args, get_origin, get_type_hints

import msgpack

from protocol.errors import ProtocolError
from protocol.messages import (
    MAX_BRANCHES,
    MAX_FRAME_BYTES,
    MAX_METRICS,
    MAX_TEXT_CHARS,
    MAX_TOKENS_PER_LIST,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    TOKEN_ID_LIMIT,
    Message,
)

_ENVELOPE_KEYS = {"v", "type", "body"}
# Bounds handed to msgpack so that a huge declared length fails before anything is allocated.
_UNPACK_LIMITS = dict(
    max_str_len=4 * MAX_TEXT_CHARS,  # utf-8 bytes
    max_bin_len=0,  # no field is bytes
    max_ext_len=0,
    max_array_len=MAX_TOKENS_PER_LIST,
    max_map_len=MAX_METRICS,
)
Checker = Callable[[Any, str], Any]  # (value, path for errors) -> checked value


def encode(msg: Message) -> bytes:
    """Validate `msg` against its type hints and pack it in the envelope."""
    name = type(msg).__name__
    if MESSAGE_TYPES.get(name) is not type(msg):
        raise ProtocolError(f"cannot encode {type(msg).__qualname__}: not a wire message type")
    body = {f.name: getattr(msg, f.name) for f in fields(msg)}
    _check_body(name, body)
    data = msgpack.packb({"v": PROTOCOL_VERSION, "type": name, "body": body}, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{name}: encoded size {len(data)} bytes > MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    return data


def decode(data: bytes) -> Message:
    """Unpack and validate one frame; anything malformed raises ProtocolError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"frame must be bytes, got {type(data).__name__}")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes > MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises many types: ValueError, ExtraData, FormatError...
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    name, body = _open_envelope(envelope)
    request_id = body.get("request_id")
    try:
        return MESSAGE_TYPES[name](**_check_body(name, body))
    except ProtocolError as exc:
        exc.request_id = request_id if isinstance(request_id, str) else None
        raise


def _open_envelope(envelope: Any) -> tuple[str, dict]:
    if not isinstance(envelope, dict):
        raise ProtocolError(f"envelope must be a map, got {type(envelope).__name__}")
    if set(envelope) != _ENVELOPE_KEYS:
        keys = sorted(map(str, envelope))
        raise ProtocolError(f"envelope keys must be {sorted(_ENVELOPE_KEYS)}, got {keys}")
    version = envelope["v"]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (expected {PROTOCOL_VERSION})")
    name = envelope["type"]
    if not isinstance(name, str) or name not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {name!r}")
    body = envelope["body"]
    if not isinstance(body, dict):
        raise ProtocolError(f"{name}: body must be a map, got {type(body).__name__}")
    return name, body


def _check_body(name: str, body: dict) -> dict:
    """Check that `body` has exactly the fields of message `name`; return the checked values."""
    checkers = _SCHEMAS[name]
    missing = [key for key in checkers if key not in body]
    if missing:
        raise ProtocolError(f"{name}: missing field {missing[0]!r}")
    extra = [key for key in body if key not in checkers]
    if extra:
        raise ProtocolError(f"{name}: unknown field {str(extra[0])!r}")
    return {key: check(body[key], f"{name}.{key}") for key, check in checkers.items()}


def _compile(hint: Any) -> Checker:
    """The checker for one type hint; each returns the value normalised (int -> float for float)."""
    if hint in _SCALAR_CHECKERS:
        return _SCALAR_CHECKERS[hint]
    origin, args = get_origin(hint), get_args(hint)
    if origin in (types.UnionType, Union) and len(args) == 2 and type(None) in args:
        inner = _compile(next(arg for arg in args if arg is not type(None)))
        return lambda value, path: None if value is None else inner(value, path)
    if origin is list and args[0] is int:
        return _check_token_ids  # every list[int] on the wire holds token ids
    if origin is list:
        limit = MAX_BRANCHES if get_origin(args[0]) is list else MAX_TOKENS_PER_LIST
        return partial(_check_list, item=_compile(args[0]), limit=limit)
    if origin is dict:
        return partial(_check_dict, key=_compile(args[0]), item=_compile(args[1]))
    raise TypeError(f"unsupported wire type {hint!r}")  # a bug in messages.py


def _check_int(value: Any, path: str) -> int:
    if type(value) is not int:  # rejects bool, which is an int subclass
        raise _wrong_type(path, "int", value)
    return value


def _check_float(value: Any, path: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _wrong_type(path, "finite float", value)
    return float(value)


def _check_bool(value: Any, path: str) -> bool:
    if type(value) is not bool:
        raise _wrong_type(path, "bool", value)
    return value


def _check_str(value: Any, path: str) -> str:
    if type(value) is not str:
        raise _wrong_type(path, "str", value)
    if len(value) > MAX_TEXT_CHARS:
        raise ProtocolError(f"{path}: text of {len(value)} chars > MAX_TEXT_CHARS={MAX_TEXT_CHARS}")
    return value


def _check_token_ids(value: Any, path: str) -> list[int]:
    _check_length(value, MAX_TOKENS_PER_LIST, path)
    # Fast path in C (map, min, max); the slow loop below only runs to name the bad item.
    if not value or (set(map(type, value)) == {int} and min(value) >= 0 and max(value) < TOKEN_ID_LIMIT):
        return value
    for i, token in enumerate(value):
        if type(token) is not int or not 0 <= token < TOKEN_ID_LIMIT:
            raise ProtocolError(f"{path}[{i}]: token id must be an int in [0, 2**31), got {token!r}")
    return value


def _check_list(value: Any, path: str, *, item: Checker, limit: int) -> list:
    _check_length(value, limit, path)
    return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]


def _check_length(value: Any, limit: int, path: str) -> None:
    if type(value) is not list:
        raise _wrong_type(path, "list", value)
    if len(value) > limit:
        raise ProtocolError(f"{path}: list of {len(value)} items > limit {limit}")


def _check_dict(value: Any, path: str, *, key: Checker, item: Checker) -> dict:
    if type(value) is not dict:
        raise _wrong_type(path, "map", value)
    if len(value) > MAX_METRICS:
        raise ProtocolError(f"{path}: map of {len(value)} entries > MAX_METRICS={MAX_METRICS}")
    return {key(k, f"{path} key"): item(v, f"{path}[{k!r}]") for k, v in value.items()}


def _wrong_type(path: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{path}: expected {expected}, got {type(value).__name__} {reprlib.repr(value)}")


_SCALAR_CHECKERS: dict[type, Checker] = {
    int: _check_int, float: _check_float, bool: _check_bool, str: _check_str,
}
# One checker per field of every message, compiled once from the dataclass type hints.
_SCHEMAS: dict[str, dict[str, Checker]] = {
    name: {key: _compile(hint) for key, hint in get_type_hints(cls).items()}
    for name, cls in MESSAGE_TYPES.items()
}
