"""The one msgpack codec: encode(msg) -> bytes and a strict, type-hint-driven decode(bytes) -> msg."""
# Envelope, a msgpack map with exactly these keys:
#     {"v": PROTOCOL_VERSION, "type": "<message class name>", "body": {field: value, ...}}
# The body holds every field of the dataclass, no more and no fewer. Values are checked against
# the dataclass type hints by one generic validator (_check), on encode and on decode.
from __future__ import annotations

import math
import reprlib
import types
from dataclasses import fields
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
_SCHEMAS: dict[str, dict[str, Any]] = {
    name: get_type_hints(cls) for name, cls in MESSAGE_TYPES.items()
}


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
        raise ProtocolError(f"envelope keys must be {sorted(_ENVELOPE_KEYS)}, got {sorted(map(str, envelope))}")
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
    hints = _SCHEMAS[name]
    missing = [key for key in hints if key not in body]
    if missing:
        raise ProtocolError(f"{name}: missing field {missing[0]!r}")
    extra = [key for key in body if key not in hints]
    if extra:
        raise ProtocolError(f"{name}: unknown field {str(extra[0])!r}")
    return {key: _check(body[key], hint, f"{name}.{key}") for key, hint in hints.items()}


def _check(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against type `hint`; return it normalised (ints given for floats -> float)."""
    if hint is int:
        if type(value) is not int:  # rejects bool, which is an int subclass
            raise _wrong_type(path, "int", value)
        return value
    if hint is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _wrong_type(path, "finite float", value)
        return float(value)
    if hint is bool:
        if type(value) is not bool:
            raise _wrong_type(path, "bool", value)
        return value
    if hint is str:
        if type(value) is not str:
            raise _wrong_type(path, "str", value)
        if len(value) > MAX_TEXT_CHARS:
            raise ProtocolError(f"{path}: text of {len(value)} chars > MAX_TEXT_CHARS={MAX_TEXT_CHARS}")
        return value
    origin, args = get_origin(hint), get_args(hint)
    if origin in (types.UnionType, Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _check(value, inner, path)
    if origin is list:
        return _check_list(value, args[0], path)
    if origin is dict:
        return _check_dict(value, args, path)
    raise TypeError(f"{path}: unsupported wire type {hint!r}")  # a bug in messages.py


def _check_list(value: Any, item: Any, path: str) -> list:
    if type(value) is not list:
        raise _wrong_type(path, "list", value)
    limit = MAX_BRANCHES if get_origin(item) is list else MAX_TOKENS_PER_LIST
    if len(value) > limit:
        raise ProtocolError(f"{path}: list of {len(value)} items > limit {limit}")
    if item is int:  # every list[int] on the wire holds token ids
        for i, token in enumerate(value):
            if type(token) is not int or not 0 <= token < TOKEN_ID_LIMIT:
                raise ProtocolError(f"{path}[{i}]: token id must be an int in [0, 2**31), got {token!r}")
        return value
    return [_check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]


def _check_dict(value: Any, args: tuple, path: str) -> dict:
    key_hint, value_hint = args
    if type(value) is not dict:
        raise _wrong_type(path, "map", value)
    if len(value) > MAX_METRICS:
        raise ProtocolError(f"{path}: map of {len(value)} entries > MAX_METRICS={MAX_METRICS}")
    return {
        _check(k, key_hint, f"{path} key"): _check(v, value_hint, f"{path}[{k!r}]")
        for k, v in value.items()
    }


def _wrong_type(path: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{path}: expected {expected}, got {type(value).__name__} {reprlib.repr(value)}")
