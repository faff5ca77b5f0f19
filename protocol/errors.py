"""Typed errors raised by the protocol layer and the client library."""
from __future__ import annotations


class ProtocolError(ValueError):
    """A malformed or invalid message; `request_id` is set when the message named one."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class OuroborosError(Exception):
    """Base of the errors a client sees when talking to a server."""


class ServerError(OuroborosError):
    """The server answered a request with an Error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServerTimeout(OuroborosError):
    """No reply within the timeout: the server is dead, absent or overloaded."""


class ClientClosed(OuroborosError):
    """The client was used after close()."""
