"""``GET /metrics``: the server's Prometheus metrics (``prometheus-client``, in a registry of its own).

- ``apt_serve_requests_total{endpoint, status}``: HTTP requests answered;
- ``apt_serve_prompt_tokens_total``, ``apt_serve_generated_tokens_total``;
- ``apt_serve_queue_depth``: requests waiting for a slot; ``apt_serve_running_requests``: the running batch;
- ``apt_serve_time_to_first_token_seconds``: from a request's arrival to its first token;
- ``apt_serve_inter_token_latency_seconds``: between two tokens of one request.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("apt_serve_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=registry)
        self.prompt_tokens = Counter("apt_serve_prompt_tokens", "Prompt tokens read", registry=registry)
        self.generated = Counter("apt_serve_generated_tokens", "Tokens generated", registry=registry)
        self.queue = Gauge("apt_serve_queue_depth", "Requests waiting for a slot in the batch", registry=registry)
        self.running = Gauge("apt_serve_running_requests", "Requests in the running batch", registry=registry)
        self.first_token = Histogram("apt_serve_time_to_first_token_seconds", "From a request's arrival to its "
                                     "first token", buckets=LATENCY_BUCKETS, registry=registry)
        self.inter_token = Histogram("apt_serve_inter_token_latency_seconds", "Between two tokens of a request",
                                     buckets=LATENCY_BUCKETS, registry=registry)

    def observe_token(self, seconds: float, first: bool) -> None:
        """Called by the engine for every token it generates."""
        (self.first_token if first else self.inter_token).observe(seconds)
        self.generated.inc()

    def observe_engine(self, engine) -> None:
        """Called by the engine after each step."""
        self.queue.set(engine.waiting)
        self.running.set(engine.running)

    def render(self) -> bytes:
        return generate_latest(self.registry)
