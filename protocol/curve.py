"""ZeroMQ CURVE authentication and encryption for links that leave the machine.

`ouroboros keys DIR` writes one key pair for the verifier (the server of both links) and one
for its peers (clients and the drafter):

    DIR/server.key          public   - every peer needs it, to know it talks to the real verifier
    DIR/server.key_secret   secret   - the verifier only
    DIR/client.key          public   - copied to DIR/authorized/: the keys the verifier admits
    DIR/client.key_secret   secret   - clients and the drafter

With `--curve-keys DIR` the verifier only completes handshakes with keys found in
DIR/authorized/; anyone else never gets a frame through (their requests time out), and all
traffic is encrypted. Add more public keys to DIR/authorized/ to admit more peers.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER = "server"
CLIENT = "client"
AUTHORIZED = "authorized"


class CurveKeyError(ValueError):
    """Keys missing, unreadable or not usable."""


def create_keys(directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the two key pairs into `directory` (created, secrets readable by the owner only)."""
    if not zmq.has("curve"):
        raise CurveKeyError("this libzmq was built without CURVE support (libsodium)")
    root = Path(directory)
    existing = [p for p in (root / f"{SERVER}.key_secret", root / f"{CLIENT}.key_secret") if p.exists()]
    if existing and not overwrite:
        raise CurveKeyError(f"{existing[0]} already exists: keep it, or pass --overwrite to make new keys")
    (root / AUTHORIZED).mkdir(parents=True, exist_ok=True)
    for name in (SERVER, CLIENT):
        zmq.auth.create_certificates(root, name)
        os.chmod(root / f"{name}.key_secret", 0o600)
    shutil.copy(root / f"{CLIENT}.key", root / AUTHORIZED / f"{CLIENT}.key")
    return root


def _load(directory: str | os.PathLike, name: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(directory) / (f"{name}.key_secret" if secret else f"{name}.key")
    if not path.is_file():
        raise CurveKeyError(f"no CURVE key at {path}: make keys with `ouroboros keys {directory}`")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise CurveKeyError(f"unreadable CURVE key {path}: {exc}") from exc
    if secret and not secret_key:
        raise CurveKeyError(f"{path} holds no secret key")
    return public, secret_key


def secure_server(sock: zmq.Socket, directory: str | os.PathLike) -> None:
    """Make `sock` (before bind) a CURVE server with the verifier's key pair."""
    public, secret = _load(directory, SERVER, secret=True)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def secure_client(sock: zmq.Socket, directory: str | os.PathLike) -> None:
    """Make `sock` (before connect) a CURVE client: our key pair, and the verifier's public key."""
    server_public, _ = _load(directory, SERVER, secret=False)
    public, secret = _load(directory, CLIENT, secret=True)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def start_authenticator(ctx: zmq.Context, directory: str | os.PathLike) -> ThreadAuthenticator:
    """Admit only the public keys in DIR/authorized/ to the CURVE servers of this context."""
    check_keys(directory, as_client=False)
    authorized = Path(directory) / AUTHORIZED
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    return auth


def check_keys(directory: str | os.PathLike, *, as_server: bool = True, as_client: bool = True) -> None:
    """Fail in one line, before anything starts, when DIR lacks the keys a side needs: the server
    its key pair and an authorized key, a client its key pair and the server's public key."""
    if as_server:
        _load(directory, SERVER, secret=True)
        authorized = Path(directory) / AUTHORIZED
        if not authorized.is_dir() or not any(authorized.glob("*.key")):
            raise CurveKeyError(f"no authorized public keys in {authorized}: make keys with `ouroboros keys {directory}`")
    if as_client:
        _load(directory, SERVER, secret=False)
        _load(directory, CLIENT, secret=True)
