"""The verifier loop's drafter-link handlers, driven over a real socket by a fake drafter."""
import msgpack
import pytest
import zmq

from protocol.client import make_generate
from protocol.codec import decode, encode
from protocol.messages import PROTOCOL_VERSION, Error, ErrorCode, Hello, HelloAck
from tests.conftest import tiny_model
from verifier.config import VerifierConfig
from verifier.engine import TargetEngine
from verifier.server import VerifierServer


@pytest.fixture
def link(tmp_path):
    endpoint = f"ipc://{tmp_path}/drafter.sock"
    server = VerifierServer(TargetEngine(tiny_model("llama")), None, VerifierConfig(), "tcp://127.0.0.1:0", endpoint,
                            tokenizer_fingerprint="fp-of-the-target")
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.connect(endpoint)
    yield server, peer
    peer.close(0)
    server.clients.close(0)
    server.link.socket.close(0)


def exchange(server, peer, frame: bytes):
    peer.send(frame)
    assert server.link.socket.poll(5000)
    server.drain_drafter()
    assert peer.poll(5000), "the verifier did not answer"
    return decode(peer.recv())


def test_a_drafter_with_another_tokenizer_is_refused_with_the_reason(link):
    server, peer = link
    reply = exchange(server, peer, encode(Hello(drafter_id="d", vocab_size=96, tokenizer_fingerprint="other", max_draft_length=4, max_sessions=4)))
    assert isinstance(reply, Error) and reply.code == ErrorCode.REFUSED and "tokenizer differs" in reply.message
    assert server.link.identity is None


def test_a_padded_vocabulary_with_the_same_tokenizer_is_welcome(link):
    server, peer = link
    reply = exchange(server, peer, encode(Hello(drafter_id="d", vocab_size=96 + 64,
                                                tokenizer_fingerprint="fp-of-the-target", max_draft_length=4,
                                                max_sessions=4)))
    assert isinstance(reply, HelloAck) and reply.vocab_size == 96 and server.link.identity is not None


def test_a_peer_on_another_protocol_version_is_told_so(link):
    server, peer = link
    old_hello = msgpack.packb({"v": 1, "type": "Hello", "body": {"drafter_id": "d", "vocab_size": 96,
                                                                  "model_name": "x"}})
    reply = exchange(server, peer, old_hello)
    assert isinstance(reply, Error) and reply.code == ErrorCode.REFUSED
    assert f"unsupported protocol version 1 (expected {PROTOCOL_VERSION})" in reply.message


def test_no_more_requests_are_opened_on_the_drafter_than_its_hello_has_room_for(link):
    """Past the drafter's KV slots (Hello.max_sessions) a request goes to the target alone; it
    is opened there as soon as one there ends."""
    server, peer = link
    reply = exchange(server, peer, encode(Hello(drafter_id="d", vocab_size=96, tokenizer_fingerprint="fp-of-the-target",
                                                max_draft_length=4, max_sessions=1)))
    assert isinstance(reply, HelloAck)
    first, second = (make_generate([5, 6, 7, n], is_stream=False, max_new_tokens=8) for n in (8, 9))
    for msg in (first, second):
        server.handle_generate(b"client", msg)
    server.open_admitted()
    opened = [decode(peer.recv()) for _ in range(1)]
    assert [type(m).__name__ for m in opened] == ["Open"] and not peer.poll(200)  # one, not two
    assert [r.is_on_drafter for r in server.requests.values()] == [True, False]
    server.end(server.requests[opened[0].request_id], None)
    server.open_admitted()
    after = [decode(peer.recv()) for _ in range(2)]
    assert [(type(m).__name__, m.request_id) for m in after] == [("Close", first.request_id), ("Open", second.request_id)]
