"""The Broker seam: moves messages between nodes and into the persistence log.

A broker never imports the hub or the gateway: it is handed a ``BrokerHandler`` and calls
back into it. Guarantees every implementation keeps (checked by tests/server/broker):

* ``publish`` is atomic: the idempotency check on (sender, client_msg_id), the next
  per-channel seq (gap-free, starting at 1, never reused), and the append to the durable
  persistence log happen as one step. A retried publish returns the original message
  with ``duplicate=True``.
* Fan-out: every node subscribed to a channel gets ``on_message`` once per message, in
  seq order per channel, and only for messages that are in the durable log.
* ``on_persisted`` reaches the node the message was published from, after the message is
  committed to the store; that is when the sender gets its ``ack``. It may come more than
  once, and before ``publish`` returned (server/acks.py allows for both). A retry that
  returns ``duplicate=True, persisted=False`` gets its ``on_persisted`` on the retrying
  node too.
* A draft may carry a ``SharedBudget`` (a shared rate limit, ``server.ratelimit``): the broker
  consumes one unit of it in the same step as the publish, or publishes nothing and raises
  ``RateLimitedError``. Only a broker that keeps its counters where the budget lives is
  handed one (the Redis broker, when the rate limits share its Redis); any other refuses it.
* ``ready()`` is False while the node cannot receive fan-out; a broker recovers by itself.
* Everything is namespaced by tenant: the same channel id in two tenants never mixes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from storage.messages import IdempotencyRecord
from storage.models import Message
from storage.worker import PersistenceLog


@dataclass(frozen=True, slots=True)
class SharedBudget:
    """One hit on a shared moving-window rate limit, made by the broker with the publish
    so that a publish costs one round trip to Redis, not two. ``key`` is the Redis key the
    ``limits`` library keeps the window in (the same window every other check of the
    policy uses); ``refused`` records the refusal and returns the error to raise."""

    key: str
    limit: int
    window_s: int
    refused: Callable[[float], Exception]  # (unix time the oldest hit leaves the window)


# Draft and Published are made for every published message, and so is LogEntry: tuples
# (immutable all the same) cost a third of a frozen dataclass to make (its ``__init__`` sets
# each field through ``object.__setattr__``).
class Draft(NamedTuple):
    tenant_id: str
    channel_id: str
    channel: str
    sender_id: str
    body: str
    client_msg_id: str | None
    budget: SharedBudget | None = None


class Published(NamedTuple):
    message: Message
    duplicate: bool
    persisted: bool  # already committed (only ever True for a duplicate)


@dataclass(frozen=True, slots=True)
class ChannelSeed:
    """What the store knows of a channel, for a broker that has no state for it."""

    last_seq: int
    recent: list[IdempotencyRecord]


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """Node-to-node notices. ``kind`` is e.g. ``session_revoked``, ``agent_killed``,
    ``membership_changed``; ``subject`` the id it is about. A broker raises
    ``channel_resync`` (subject: a channel id) on its own node only, when this node missed
    messages of that channel that it cannot deliver late: the channel's local subscribers
    must resubscribe with ``since`` to recover them from the store."""

    kind: str
    tenant_id: str
    subject: str


SeedSource = Callable[[str, str], Awaitable[ChannelSeed]]  # (tenant_id, channel_id)


class BrokerHandler(Protocol):
    def on_message(self, message: Message) -> None: ...

    def on_persisted(self, messages: Sequence[Message]) -> None: ...

    def on_ephemeral(self, tenant_id: str, channel_id: str, frame: bytes, origin: str) -> None:
        """``origin``: the connection id that caused it, which does not receive it."""
        ...

    def on_control(self, event: ControlEvent) -> None: ...


class Broker(Protocol):
    node_id: str

    async def start(self, handler: BrokerHandler) -> None: ...

    async def close(self) -> None: ...

    def publish(self, draft: Draft) -> Awaitable[Published]:
        """A coroutine, or a future when the broker queued the publish in the caller's step
        (the Redis broker's batch): then publishes reach the broker in call order without
        the caller awaiting each, and a caller may take the answer by a done callback."""
        ...

    def publish_now(self, draft: Draft) -> Published | None:
        """``publish``, done in the caller's step, when it needs no I/O and no wait; None
        when it would (the caller then awaits ``publish``). Same guarantees as ``publish``."""
        ...

    async def subscribe(self, tenant_id: str, channel_id: str) -> None:
        """Ask for this channel's fan-out on this node (idempotent)."""
        ...

    async def unsubscribe(self, tenant_id: str, channel_id: str) -> None: ...

    async def publish_ephemeral(
        self, tenant_id: str, channel_id: str, frame: bytes, origin: str
    ) -> None:
        """Typing and presence: delivered best effort to subscribed nodes, never stored."""
        ...

    async def publish_control(self, event: ControlEvent) -> None:
        """Delivered to every node, this one included."""
        ...

    async def recent(self, tenant_id: str, channel_id: str, since: int) -> list[Message] | None:
        """Messages after ``since`` from the broker's recent window, oldest first; None when
        the window does not reach back to ``since`` (ask the store)."""
        ...

    async def forget_recent(self, tenant_id: str) -> None:
        """Drop every recent-history window of a tenant, after an erasure or a tenant
        deletion, so no plaintext body outlives it in the broker. Recovery then reads the
        store, which holds the tombstones."""
        ...

    def ready(self) -> bool:
        """True while this node receives fan-out."""
        ...


def open_broker(url: str, seed: SeedSource, *, node_id: str) -> Broker:
    """Choose the broker by URL scheme, importing its backend lazily."""
    if url.startswith("memory:"):
        from server.broker.memory import MemoryBroker

        return MemoryBroker(seed, node_id=node_id)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from server.broker.redis import RedisBroker

        broker: Broker = RedisBroker(url, seed, node_id=node_id)
        return broker
    raise ValueError("unsupported broker URL scheme (use memory:// or redis://)")


class SharedLog(PersistenceLog, Protocol):
    """A persistence log that worker processes reach on their own."""

    def stop(self) -> None:
        """Hand out no new entries (shutting down); a batch in hand is still returned."""
        ...

    async def close(self) -> None:
        """Release what this consumer holds uncommitted, for other workers to take."""
        ...


def open_log(url: str, *, consumer: str) -> SharedLog:
    """The persistence log of the broker at ``url``, for a ``baychat worker`` process.
    ``consumer`` names this worker among the others draining the same log."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from server.broker.redis import open_redis_log

        return open_redis_log(url, consumer=consumer)
    raise ValueError(
        "this broker's log lives inside the gateway process: run the worker embedded"
        " (BAYCHAT_EMBEDDED_WORKER=1), or use a shared broker (BAYCHAT_BROKER_URL=redis://...)"
    )
