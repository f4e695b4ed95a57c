"""What one load-generator process is asked to do, and what it reports back.

Plain picklable records: the parent builds them, worker processes (spawned) run them.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["stream", "storm", "idle"]


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """One WebSocket connection: its token, what it subscribes to, what it publishes."""

    token: str
    subscribe: tuple[str, ...] = ()
    publish: str | None = None  # channel this connection publishes on
    rate: float = 0.0  # publishes per second (open loop)
    kind: str = "user"


@dataclass(frozen=True, slots=True)
class Workload:
    """A scenario's whole load for one run (one step), before it is split over processes."""

    mode: Mode
    conns: tuple[ConnSpec, ...] = ()
    storm_tokens: tuple[str, ...] = ()  # tokens cycled through by storm connects
    storm_rate: float = 0.0  # connects per second, all processes together
    levels: tuple[int, ...] = ()  # idle: connection counts to ramp through
    offered: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    index: int
    ws_url: str
    mode: Mode
    conns: tuple[ConnSpec, ...]
    body_size: int
    connect_rate: float  # connections per second this process opens (0: no pacing)
    storm_tokens: tuple[str, ...] = ()
    storm_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Window:
    """Monotonic nanoseconds shared by every process on the host: publishing starts at
    ``start``, measurement runs from ``measure`` to ``stop``, results are taken at ``end``."""

    start: int
    measure: int
    stop: int
    end: int


@dataclass(slots=True)
class SubscriberRecord:
    """The seqs one connection received on one channel, in arrival order."""

    channel: str
    seqs: array[int] = field(default_factory=lambda: array("q"))
    kind: str = "user"


@dataclass(slots=True)
class WorkerResult:
    index: int
    connected: int = 0
    failed_connects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    published: int = 0
    acked: dict[str, list[int]] = field(default_factory=dict)  # channel -> acked seqs
    subscribers: list[SubscriberRecord] = field(default_factory=list)
    # HDR histograms (encoded), microseconds: deliveries of messages scheduled in the window,
    # acks of those messages, and connect-to-ready times.
    latency: str = ""
    ack_latency: str = ""
    connect_latency: str = ""
    delivered_in_window: int = 0
    acked_in_window: int = 0
    storm_completed: int = 0
    cpu_s: float = 0.0  # this process's CPU during the measurement window
    closed: dict[int, int] = field(default_factory=dict)  # close code -> connections


def split(conns: tuple[ConnSpec, ...], processes: int) -> list[tuple[ConnSpec, ...]]:
    """Deal connections round-robin so every process gets a similar mix."""
    shares: list[list[ConnSpec]] = [[] for _ in range(max(processes, 1))]
    for i, conn in enumerate(conns):
        shares[i % len(shares)].append(conn)
    return [tuple(share) for share in shares]
