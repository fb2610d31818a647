"""``GET /metrics``: the server's Prometheus metrics (``prometheus-client``, in a registry of its own).

- ``apt_serve_requests_total{endpoint, status}``: HTTP requests answered;
- ``apt_serve_prompt_tokens_total``, ``apt_serve_generated_tokens_total``;
- ``apt_serve_queue_depth``: requests waiting for a slot; ``apt_serve_running_requests``: the running batch;
- ``apt_serve_time_to_first_token_seconds``: from a request's arrival to its first token;
- ``apt_serve_inter_token_latency_seconds``: between two tokens of one request.

The per-token figures (``Figures``) are counted by the engine in plain lists, without a lock (a
``prometheus_client.Histogram`` takes one for every observation, a tenth of a decode step's time at 32
requests), in the engine's process; each message of the engine brings them to the server, which renders
them when scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Latencies:
    """A histogram one thread writes without a lock (the engine's); a scrape reads a consistent-enough copy."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        counts, cumulative, buckets = list(self.counts), 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class Figures:
    """What the engine counts for every token: time to first token, time between tokens, tokens generated."""

    def __init__(self) -> None:
        self.first_token, self.inter_token, self.generated = Latencies(), Latencies(), 0

    def observe_token(self, seconds: float, first: bool) -> None:
        """Called by the engine for every token it generates."""
        (self.first_token if first else self.inter_token).observe(seconds)
        self.generated += 1

    def observe_engine(self, engine) -> None:
        """Called by the engine after each step: nothing to count here (``Metrics`` reads the queue)."""

    def __reduce__(self) -> tuple:
        # sent with every decode step's message: as plain lists and numbers, a sixth of the generic pickle's time
        first, inter = self.first_token, self.inter_token
        return _figures, (first.counts, first.total, inter.counts, inter.total, self.generated)


def _figures(first_counts: list[int], first_total: float, inter_counts: list[int], inter_total: float,
             generated: int) -> Figures:
    figures = Figures()
    figures.first_token.counts, figures.first_token.total = first_counts, first_total
    figures.inter_token.counts, figures.inter_token.total = inter_counts, inter_total
    figures.generated = generated
    return figures


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("apt_serve_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=registry)
        self.prompt_tokens = Counter("apt_serve_prompt_tokens", "Prompt tokens read", registry=registry)
        self.queue = Gauge("apt_serve_queue_depth", "Requests waiting for a slot in the batch", registry=registry)
        self.running = Gauge("apt_serve_running_requests", "Requests in the running batch", registry=registry)
        self.figures = Figures()  # the engine's latest, as its process sent them
        registry.register(self)

    def collect(self) -> Iterator:
        """The engine's figures, for the registry (a custom collector)."""
        figures = self.figures
        yield CounterMetricFamily("apt_serve_generated_tokens", "Tokens generated", value=figures.generated)
        yield figures.first_token.family("apt_serve_time_to_first_token_seconds", "From a request's arrival to "
                                                                                  "its first token")
        yield figures.inter_token.family("apt_serve_inter_token_latency_seconds", "Between two tokens of a "
                                                                                  "request")

    def observe_engine(self, engine) -> None:
        """The queue's depth and the running batch, as the engine last said."""
        self.queue.set(engine.waiting)
        self.running.set(engine.running)

    def render(self) -> bytes:
        return generate_latest(self.registry)
