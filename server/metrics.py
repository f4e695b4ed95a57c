"""Prometheus metrics of one gateway process, served at ``GET /metrics``.

Rules every metric here keeps:

* labels never carry user content and have a small fixed set of values (frame types, the
  principal kind, error codes, rate-limit scopes); there is no per-user, per-tenant or
  per-channel label, so cardinality stays bounded however many tenants a node serves;
* nothing is updated per recipient: fan-out counts once per message (``delivered``), so
  the hot path pays one counter update per fan-out, not one per socket;
* what is counted per frame (frames in and out, the ack latency) is added to plain
  integers on the event loop (``_Tally``, ``_Buckets``) and handed to prometheus-client
  when ``/metrics`` is rendered: a metric child's ``inc`` or ``observe`` takes a lock each
  time, four of them per published message, ~4% of the gateway's CPU at 10,000 msgs/s
  (docs/BENCHMARKS.md). Every update and every render runs on the loop's thread.

Process CPU and memory come from prometheus-client's process collector
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``); the load generator
reads them to measure server cost per delivery from outside.

Other modules call the small functions below rather than touching metric objects, so the
names and label sets are defined in one place; ``server.ratelimit`` calls ``rate_limited``
whenever it refuses a request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from protocol.frames import CLIENT_FRAME_TYPES
from server.ratelimit import POLICIES

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Rate-limit hits are labelled by policy: the fixed table of server.ratelimit, plus "other".
RATE_LIMIT_SCOPES: frozenset[str] = frozenset((*POLICIES, "other"))
_KINDS = ("user", "agent")
_FRAMES_OUT = (
    "ready",
    "subscribed",
    "unsubscribed",
    "message",
    "ack",
    "history",
    "presence",
    "typing",
    "refreshed",
    "expiring",
    "error",
    "pong",
)

# One registry per process, apart from the library's global one, so that importing the app
# twice (tests) never registers a metric twice.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_connections = Gauge(
    "baychat_connections", "Authenticated WebSocket connections open", ["kind"], registry=REGISTRY
)
_connections_opened = Counter(
    "baychat_connections_opened",
    "Authenticated WebSocket connections accepted",
    ["kind"],
    registry=REGISTRY,
)
_frames_in = Counter(
    "baychat_frames_in", "Client frames received, by type", ["type"], registry=REGISTRY
)
_frames_out = Counter(
    "baychat_frames_out", "Server frames queued to clients, by type", ["type"], registry=REGISTRY
)
_deliveries = Counter(
    "baychat_deliveries", "Message frames handed to local subscribers", registry=REGISTRY
)
_socket_writes = Counter(
    "baychat_socket_writes",
    "Socket writes of the direct transport (each carries one or more queued frames)",
    registry=REGISTRY,
)
_fanouts = Counter("baychat_fanouts", "Messages fanned out to local subscribers", registry=REGISTRY)
_fanout_latency = Histogram(
    "baychat_fanout_latency_seconds",
    "From the broker accepting a message to this node handing it to its subscribers",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
_slow_consumers = Counter(
    "baychat_slow_consumer_disconnects",
    "Connections closed because their send buffer overflowed",
    registry=REGISTRY,
)
_pending_acks = Gauge(
    "baychat_persistence_pending_acks",
    "Messages published through this node that are not yet stored (their ack is pending)",
    registry=REGISTRY,
)
_batch_size = Histogram(
    "baychat_persistence_batch_size",
    "Messages written per persistence transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
    registry=REGISTRY,
)
_batch_seconds = Histogram(
    "baychat_persistence_batch_seconds",
    "Time to encrypt and commit one persistence batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)


class _Buckets(Collector):
    """A histogram observed on the loop without a lock: per-bucket counts and a sum in plain
    Python numbers, exposed through prometheus-client as a histogram family at each scrape
    (the same series a ``Histogram`` of these buckets gives: ``_bucket``, ``_count``,
    ``_sum``)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [float(bound) for bound in buckets]
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as prometheus-client's "le".
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterable[Metric]:
        cumulative, running = [], 0
        # The "le" labels as prometheus-client writes them ("0.005", "1.0", "+Inf").
        for bound, count in zip([*map(repr, self._bounds), "+Inf"], self._counts, strict=True):
            running += count
            cumulative.append((bound, running))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=cumulative, sum_value=self._sum
        )

    def describe(self) -> Iterable[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)


_ack_latency = _Buckets(
    "baychat_ack_latency_seconds",
    "From a publish frame being accepted to its ack (message stored) being queued",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REGISTRY.register(_ack_latency)
_auth_failures = Counter(
    "baychat_auth_failures",
    "Refused credentials (logins, refreshes, tokens), by error code",
    ["code"],
    registry=REGISTRY,
)
_rate_limit_hits = Counter(
    "baychat_rate_limit_hits",
    "Requests refused by a rate limit, by scope",
    ["scope"],
    registry=REGISTRY,
)


class _Tally:
    """Increments of one counter child, kept in a plain integer until the next render."""

    __slots__ = ("child", "count")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.count = 0

    def flush(self) -> None:
        count = self.count
        if count:
            self.count = 0
            self.child.inc(count)


# Bound children up front: a labelled lookup costs a dict access and a lock; the hot path
# uses these directly, per frame through a tally.
_frames_in_by_type = {
    name: _Tally(_frames_in.labels(name)) for name in (*CLIENT_FRAME_TYPES, "invalid")
}
_frames_in_invalid = _frames_in_by_type["invalid"]
_frames_out_by_type = {name: _Tally(_frames_out.labels(name)) for name in _FRAMES_OUT}
_tallies = (*_frames_in_by_type.values(), *_frames_out_by_type.values())
_message_frames_out = _frames_out_by_type["message"].child
_connections_by_kind = {kind: _connections.labels(kind) for kind in _KINDS}
_opened_by_kind = {kind: _connections_opened.labels(kind) for kind in _KINDS}
for _scope in RATE_LIMIT_SCOPES:
    _rate_limit_hits.labels(_scope)


def render() -> bytes:
    """The exposition text of every metric of this process."""
    for tally in _tallies:
        tally.flush()
    return generate_latest(REGISTRY)


def connection_opened(kind: str) -> None:
    kind = kind if kind in _connections_by_kind else "user"
    _opened_by_kind[kind].inc()
    _connections_by_kind[kind].inc()


def connection_closed(kind: str) -> None:
    _connections_by_kind[kind if kind in _connections_by_kind else "user"].dec()


def frame_in(frame_type: str) -> None:
    _frames_in_by_type.get(frame_type, _frames_in_invalid).count += 1


def frame_out(frame_type: str, count: int = 1) -> None:
    tally = _frames_out_by_type.get(frame_type)
    if tally is not None:
        tally.count += count


def delivered(recipients: int, latency_s: float) -> None:
    """One message handed to ``recipients`` local subscribers: called once per fan-out."""
    _fanouts.inc()
    _deliveries.inc(recipients)
    _message_frames_out.inc(recipients)
    _fanout_latency.observe(latency_s)


def socket_writes(count: int) -> None:
    """``count`` socket writes done in one flush pass: called once per pass."""
    _socket_writes.inc(count)


def slow_consumer() -> None:
    _slow_consumers.inc()


def persisted_batch(size: int, seconds: float) -> None:
    _batch_size.observe(size)
    _batch_seconds.observe(seconds)


def acked(latency_s: float) -> None:
    _ack_latency.observe(latency_s)


def auth_failed(code: str) -> None:
    """``code``: the ``ErrorCode`` of the refusal (a small fixed set, never user input)."""
    _auth_failures.labels(code).inc()


def rate_limited(scope: str) -> None:
    """Count one request refused by a rate limit (``scope``: the policy name; anything
    outside ``server.ratelimit.POLICIES`` counts as ``other``). The limiter calls it."""
    _rate_limit_hits.labels(scope if scope in RATE_LIMIT_SCOPES else "other").inc()


def watch_pending_acks(source: Callable[[], int]) -> None:
    """Read the pending-ack count from ``source`` at scrape time (the latest node wins)."""
    _pending_acks.set_function(lambda: float(source()))
