"""CURVE: `ouroboros keys`, a pipeline run with --curve-keys, and peers without the key refused."""
from __future__ import annotations

import stat

import pytest

from ouroboros.cli import main
from models.loading import load_model, load_tokenizer
from launch.serve import LocalPipeline
from protocol import Client, ServerTimeout
from protocol.curve import CurveKeyError, secure_client
from tests.conftest import reference_greedy
from tests.e2e.conftest import serve_args

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    assert main(["keys", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def secure_pipeline(tiny_dirs, keys):
    args = serve_args(tiny_dirs["target"], "layers:0", "--curve-keys", str(keys))
    with LocalPipeline(args) as pipeline:
        yield pipeline


def test_keys_command_writes_private_secrets_and_refuses_to_overwrite(keys, capsys):
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized/client.key"):
        assert (keys / name).is_file()
    for secret in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((keys / secret).stat().st_mode) == 0o600
    assert main(["keys", str(keys)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_key_holder_is_served_through_the_drafter(secure_pipeline, keys, tiny_dirs):
    with Client(secure_pipeline.endpoint, timeout=60, curve_keys=str(keys)) as client:
        completion = client.generate(PROMPT, max_new_tokens=24)
    tokenizer = load_tokenizer(tiny_dirs["target"])
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    expected = reference_greedy(load_model(tiny_dirs["target"]), ids, 24, stop=[tokenizer.eos_token_id])
    assert completion.token_ids == expected
    assert completion.metrics["accepted_tokens"] > 0  # the drafter, also keyed, got through too


def test_clients_without_the_key_are_refused(secure_pipeline, tmp_path):
    with Client(secure_pipeline.endpoint, timeout=3) as plain, pytest.raises(ServerTimeout):
        plain.generate(PROMPT, max_new_tokens=4)
    assert main(["keys", str(tmp_path / "other")]) == 0  # a valid pair the server never authorized
    with Client(secure_pipeline.endpoint, timeout=3, curve_keys=str(tmp_path / "other")) as stranger:
        with pytest.raises(ServerTimeout):
            stranger.generate(PROMPT, max_new_tokens=4)


def test_missing_keys_name_the_command(tmp_path):
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        with pytest.raises(CurveKeyError, match="ouroboros keys"):
            secure_client(sock, tmp_path)
    finally:
        sock.close(0)
