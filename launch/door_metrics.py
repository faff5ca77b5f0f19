"""Our drafter's counters beside vLLM's own /metrics (`serve --verifier vllm --drafter-metrics PORT`).

vLLM's /metrics stays vLLM's: its `vllm:spec_decode_*` counters count the drafts our proposer
returns. What they cannot carry (whether a drafter is there, its restarts, the drafts that were
ready when vLLM's step asked and how long steps waited for the rest) lives in the door
(verifier.vllm_door, inside vLLM's worker), which answers a StatusQuery on its drafter endpoint
between vLLM's steps. This process asks once a second, at most one question outstanding, and
serves the latest answer with gateway.metrics' names (`ouroboros:drafter_present`,
`ouroboros:predraft_hits_total`, ...) plus the drafter processes it restarted, at
http://HOST:PORT/metrics. While vLLM is idle the door does not run, so the figures are those of
its latest step."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import zmq
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from gateway.metrics import PREFIX, StatusCollector
from protocol.codec import encode
from protocol.curve import secure_client
from protocol.messages import Status, StatusQuery
from protocol.sockets import make_socket, waiting_messages

ASK_EVERY_S = 1.0
ASK_AGAIN_AFTER_S = 30.0  # a question unanswered this long (vLLM idle, or restarted) is asked again


class _Age:
    """Seconds since the door last answered (-1 before its first answer)."""

    def __init__(self) -> None:
        self.answered: float | None = None

    def collect(self):
        age = -1.0 if self.answered is None else time.monotonic() - self.answered
        yield GaugeMetricFamily(PREFIX + "drafter_status_age_seconds",
                                "Seconds since the door inside vLLM last answered (it answers between vLLM's steps).",
                                value=age)


class DrafterMetrics:
    def __init__(self, door_endpoint: str, host: str, port: int, curve_keys: str | None = None) -> None:
        self.socket = make_socket(zmq.Context.instance(), zmq.DEALER, hwm=16)
        if curve_keys is not None:  # the door admits only authorized keys (serve --curve-keys)
            secure_client(self.socket, curve_keys)
        self.socket.connect(door_endpoint)
        self.registry = CollectorRegistry()
        self.status = StatusCollector()
        self.age = _Age()
        self.registry.register(self.status)
        self.registry.register(self.age)
        self.restarts = Counter(PREFIX + "drafter_process_restarts", "Drafter processes this command started again "
                                "after one exited.", registry=self.registry)
        self.asked: float | None = None  # when the outstanding question was sent
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.url = f"http://{host}:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, name="drafter-metrics", daemon=True)
        self.thread.start()

    def poll(self) -> None:
        """Take the door's answers; ask again when none is outstanding. Never blocks."""
        for _, msg in waiting_messages(self.socket, "door", is_routed=False):
            if isinstance(msg, Status):
                self.status.update(msg)
                self.age.answered, self.asked = time.monotonic(), None
        now = time.monotonic()
        if self.asked is None and (self.age.answered is None or now - self.age.answered >= ASK_EVERY_S) or (
                self.asked is not None and now - self.asked > ASK_AGAIN_AFTER_S):
            try:
                self.socket.send(encode(StatusQuery(request_id="metrics")), zmq.NOBLOCK)
                self.asked = now
            except zmq.Again:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.socket.close()


def _handler(metrics: DrafterMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here; vLLM serves the API")
                return
            body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not news
            pass

    return Handler
