"""Prometheus metrics of the HTTP door, with vLLM's names and meanings where they fit (prefix
`ouroboros:` for `vllm:`). Request-level series are counted here as requests pass; the verifier's
state and speculative counters are read from its Status at each scrape."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from protocol.messages import Status

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0, 20.0, 40.0, 80.0)
PREFIX = "ouroboros:"


class StatusCollector:
    """Turns the latest verifier Status into series (none before the first one)."""

    def __init__(self) -> None:
        self.status: Status | None = None
        self.tokens_per_s = 0.0
        self._last: tuple[float, int] | None = None  # (time, generation tokens) at the previous scrape

    def update(self, status: Status) -> None:
        now = time.monotonic()
        if self._last is not None and now > self._last[0]:
            self.tokens_per_s = (status.generation_tokens - self._last[1]) / (now - self._last[0])
        self._last, self.status = (now, status.generation_tokens), status

    def collect(self):
        s = self.status
        if s is None:
            return
        gauges = {
            "num_requests_running": ("Requests being decoded.", s.running),
            "num_requests_waiting": ("Requests in the admission queue.", s.queued),
            "drafter_present": ("1 while a drafter drafts; 0 while the target decodes alone.", int(s.is_drafter_present)),
            "spec_decode_mean_accepted_length": ("Mean tokens per draft round: 1 + accepted / drafts.",
                                                 1 + s.num_accepted_tokens / s.num_drafts if s.num_drafts else 0.0),
            "generation_tokens_per_second": ("Tokens committed per second since the previous scrape.",
                                             self.tokens_per_s),
        }
        for name, (text, value) in gauges.items():
            yield GaugeMetricFamily(PREFIX + name, text, value=value)
        counters = {
            "spec_decode_num_drafts": ("Rounds that verified drafted tokens.", s.num_drafts),
            "spec_decode_num_draft_tokens": ("Drafted tokens verified.", s.num_draft_tokens),
            "spec_decode_num_accepted_tokens": ("Drafted tokens accepted.", s.num_accepted_tokens),
            "verification_rounds": ("Request-rounds verified, with or without a draft.", s.num_rounds),
            "drafter_restarts": ("Drafters that connected after the first.", max(s.num_drafter_handshakes - 1, 0)),
            "target_alone_seconds": ("Seconds of target passes run with no drafter present.", s.target_alone_s),
            "predraft_hits": ("Drafts verified that were drafted ahead: ready when their verdict came (the "
                              "drafter's chain or its speculation cache).", s.num_predraft_hits),
            "predraft_misses": ("Drafts verified that were drafted after their verdict came.", s.num_predraft_misses),
            "draft_wait_seconds": ("Seconds the target stood idle before rounds that verified a draft.",
                                   s.draft_wait_s),
        }
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(PREFIX + name, text, value=value)
        per_position = CounterMetricFamily(PREFIX + "spec_decode_num_accepted_tokens_per_pos",
                                           "Drafts whose token at this position (0 = first) was accepted.",
                                           labels=["position"])
        for position, count in enumerate(s.accepted_by_position):
            per_position.add_metric([str(position)], count)
        yield per_position


class DoorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                                ["finished_reason"], registry=r)
        self.failed = Counter(PREFIX + "request_failure", "Requests answered with an error, by HTTP status.",
                              ["status"], registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated for finished requests.",
                                         registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to the first token.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between tokens (a chunk's wait shared by "
                             "its tokens).", buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Time from request to last token.",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.status = StatusCollector()
        r.register(self.status)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Times one request's tokens into the histograms."""

    def __init__(self, metrics: DoorMetrics) -> None:
        self.metrics = metrics
        self.start = self.last = time.monotonic()
        self.has_first = False

    def tokens(self, count: int) -> None:
        """A chunk of `count` tokens arrived: the first chunk gives the TTFT; each later chunk
        gives each of its tokens an equal share of the wait since the chunk before."""
        if count <= 0:
            return
        now = time.monotonic()
        if not self.has_first:
            self.metrics.ttft.observe(now - self.start)
            self.has_first = True
        else:
            for _ in range(count):
                self.metrics.itl.observe((now - self.last) / count)
        self.last = now

    def finished(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.requests.labels(finished_reason=reason).inc()
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(completion_tokens)
        self.metrics.e2e.observe(time.monotonic() - self.start)
