"""Torch-free wire protocol: message types, codec, validation, socket helpers, errors, clients."""
from protocol.async_client import AsyncClient, AsyncStream
from protocol.client import Chunk, Client, Completion, GenerateParams, Stream
from protocol.codec import decode, encode
from protocol.errors import ClientClosed, OuroborosError, ProtocolError, ServerError, ServerTimeout
from protocol.messages import (
    MAX_BRANCHES,
    MAX_FRAME_BYTES,
    MAX_TEXT_CHARS,
    MAX_TOKENS_PER_LIST,
    PROTOCOL_VERSION,
    Cancel,
    Close,
    Done,
    Draft,
    Error,
    ErrorCode,
    FinishReason,
    Generate,
    Hello,
    HelloAck,
    Message,
    Open,
    Resync,
    Tokens,
    Verdict,
)
from protocol.sockets import bind_address, make_socket, warn_if_public
from protocol.validation import validate_generate

__all__ = [
    "AsyncClient", "AsyncStream", "Chunk", "Client", "Completion", "GenerateParams", "Stream",
    "decode", "encode",
    "ClientClosed", "OuroborosError", "ProtocolError", "ServerError", "ServerTimeout",
    "MAX_BRANCHES", "MAX_FRAME_BYTES", "MAX_TEXT_CHARS", "MAX_TOKENS_PER_LIST", "PROTOCOL_VERSION",
    "Cancel", "Close", "Done", "Draft", "Error", "ErrorCode", "FinishReason", "Generate", "Hello",
    "HelloAck", "Message", "Open", "Resync", "Tokens", "Verdict",
    "bind_address", "make_socket", "warn_if_public", "validate_generate",
]
