"""A verdict lost between the processes: the drafter asks for a re-sync, the verifier re-opens
the request from its committed tokens, and the request completes identical with drafts used
again. Real servers and sockets, with a proxy between them that drops one verdict."""
import threading

import torch

import zmq

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from drafter.server import DrafterServer
from protocol.client import Client
from protocol.codec import decode
from protocol.messages import Resync, Verdict
from tests.conftest import reference_greedy
from tests.families import family_pair, make_tokenizer
from verifier.config import VerifierConfig
from verifier.engine import TargetEngine
from verifier.server import VerifierServer

DROP_VERDICT = 3  # the third verdict never reaches the drafter


class DroppingProxy:
    """ROUTER for the drafter on one side, DEALER to the verifier on the other; drops one verdict
    and records what crossed."""

    def __init__(self, ctx: zmq.Context, verifier_endpoint: str, drafter_endpoint: str) -> None:
        self.to_drafter, self.to_verifier = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        self.to_drafter.bind(drafter_endpoint)
        self.to_verifier.connect(verifier_endpoint)
        self.drafter_id = None
        self.num_verdicts, self.resync_at = 0, None
        self.verified_after_resync = 0
        self.is_running = True

    def loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.to_drafter, zmq.POLLIN)
        poller.register(self.to_verifier, zmq.POLLIN)
        while self.is_running:
            events = dict(poller.poll(20))
            if self.to_drafter in events:
                self.drafter_id, frame = self.to_drafter.recv_multipart()
                if isinstance(decode(frame), Resync):
                    self.resync_at = self.num_verdicts
                self.to_verifier.send(frame)
            if self.to_verifier in events:
                frame = self.to_verifier.recv()
                msg = decode(frame)
                if isinstance(msg, Verdict):
                    self.num_verdicts += 1
                    if self.resync_at is not None:
                        self.verified_after_resync += msg.num_trunk_verified
                    if self.num_verdicts == DROP_VERDICT:
                        continue
                self.to_drafter.send_multipart([self.drafter_id, frame])
        self.to_drafter.close(0)
        self.to_verifier.close(0)


def test_a_lost_verdict_is_recovered_by_a_resync(tmp_path):
    tokenizer = make_tokenizer()
    target, draft = family_pair("llama", len(tokenizer))
    with torch.no_grad():  # the target's later layers add nothing: the draft (its layer 0) is exact, and pays
        for layer in target.model.layers[1:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    ctx = zmq.Context.instance()
    verifier_link, proxy_link = f"ipc://{tmp_path}/v.sock", f"ipc://{tmp_path}/p.sock"
    config = VerifierConfig(draft_timeout_s=5.0)
    verifier = VerifierServer(TargetEngine(target), tokenizer, config,
                              "tcp://127.0.0.1:0", verifier_link, tokenizer_fingerprint="fp")
    drafter = DrafterServer(DraftEngine(draft, DrafterConfig(gamma=4)), proxy_link, "fp",
                            len(tokenizer))
    proxy = DroppingProxy(ctx, verifier_link, proxy_link)
    loops = [threading.Thread(target=x.loop if x is proxy else x.serve_loop, daemon=True)
             for x in (proxy, verifier, drafter)]
    for loop in loops:
        loop.start()
    try:
        endpoint = verifier.clients.getsockopt(zmq.LAST_ENDPOINT).decode()
        ids = tokenizer("def add(a, b):\n    return", add_special_tokens=False)["input_ids"]
        with Client(endpoint, timeout=60) as client:
            completion = client.generate(ids, max_new_tokens=160)
    finally:
        for server in (verifier, drafter, proxy):
            server.is_running = False
        for loop in loops:
            loop.join(10)
    assert completion.token_ids == reference_greedy(target, ids, 160, stop=[tokenizer.eos_token_id])
    assert proxy.num_verdicts > DROP_VERDICT + 1 and proxy.resync_at == DROP_VERDICT + 1  # asked at the next one
    assert proxy.verified_after_resync > 0  # drafts were verified again after the re-sync
