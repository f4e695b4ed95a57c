"""A node's pub/sub connection to Redis: fan-out, control events and persisted notices.

One listener task owns the connection. When it drops (Redis restarted, network cut, a
silent peer that stops answering pings) the node is unready until a fresh connection has
resubscribed to every channel the node wants *and* caught up: for each channel, what was
published while the node was deaf is read back from the channel's recent window and
delivered in seq order before any live message of that channel. A gap the window cannot
fill is reported to the sink (``lost``) so the node can send its subscribers back to the
store. redis-py's own reconnection is kept out of the way (the client has no retries):
a silent reconnect would resubscribe without that catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from protocol.errors import UnavailableError
from server.broker.redis_keys import Namespace, decode_line
from storage.models import Message

_log = logging.getLogger("baychat.broker.redis")

ChannelKey = tuple[str, str]  # (tenant id, channel id)
MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
IDLE_PING_S = 5.0  # ping a quiet connection this often ...
DEAD_AFTER_S = 15.0  # ... and give it up when nothing at all came back for this long
MAX_HELD = 100_000  # live messages held while resubscribing; past it, start over


class FanoutSink(Protocol):
    """What the listener hands its traffic to (the broker, which calls the node)."""

    def message(self, message: Message) -> None: ...

    def ephemeral(self, tenant_id: str, channel_id: str, frame: bytes, origin: str) -> None: ...

    def persisted(self, notice: bytes) -> None:
        """A worker's notice that messages published from this node are stored
        (``redis_keys.encode_lines``)."""
        ...

    def control(self, entry_id: str, payload: bytes) -> None: ...

    async def fill(self, tenant_id: str, channel_id: str, since: int) -> list[Message] | None:
        """The channel's messages after ``since``, or None if Redis no longer has them."""
        ...

    def lost(self, tenant_id: str, channel_id: str) -> None:
        """Messages of this channel were missed and cannot be read back from Redis."""
        ...

    async def synced(self) -> None:
        """The connection is (again) live and caught up."""
        ...


class Fanout:
    def __init__(
        self,
        client: Redis,
        names: Namespace,
        node_id: str,
        sink: FanoutSink,
        *,
        subscribe_timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self._names = names
        self._sink = sink
        self._subscribe_timeout_s = subscribe_timeout_s
        self._node_channel = names.node(node_id).encode()
        self._control_channel = names.control.encode()
        self._wanted: dict[bytes, ChannelKey] = {}
        self._confirmed: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._last: dict[ChannelKey, int] = {}  # highest seq handed to the sink per channel
        self._pubsub: PubSub | None = None
        self._lock = asyncio.Lock()  # serialises SUBSCRIBE/UNSUBSCRIBE and session changes
        self._ready = False
        self._task: asyncio.Task[None] | None = None
        self.sessions = 0  # how many times a connection became live (for tests and metrics)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-fanout")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready and self._task is not None and not self._task.done()

    # -- channels -----------------------------------------------------------------------

    def _name(self, key: ChannelKey) -> bytes:
        return self._names.tenant(key[0]).fanout(key[1]).encode()

    async def subscribe(self, key: ChannelKey, head: int) -> None:
        """Return once this node receives the channel's fan-out. ``head`` is a seq the
        caller knows to exist, the floor for catching up after a reconnect."""
        name = self._name(key)
        self._wanted[name] = key
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(waiter)
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is not None:
                # On failure the listener reconnects and subscribes to everything wanted.
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.subscribe(name)
        try:
            await asyncio.wait_for(waiter, self._subscribe_timeout_s)
        except TimeoutError:
            waiters = self._waiters.get(name, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if self._wanted.get(name) == key and not waiters:
                del self._wanted[name]
            raise UnavailableError("message fan-out is unavailable; retry later") from None
        # A message delivered meanwhile already set a higher floor; one held during a
        # resync at or below ``head`` is dropped here, but the caller reads everything up
        # to ``head`` from the window or the store after this returns.
        self._last.setdefault(key, head)

    async def unsubscribe(self, key: ChannelKey) -> None:
        name = self._name(key)
        if self._wanted.pop(name, None) is None:
            return
        self._last.pop(key, None)
        async with self._lock:
            if name in self._wanted:
                return  # subscribed again while we waited for the lock
            pubsub = self._pubsub
            if pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.unsubscribe(name)

    # -- the listener -------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = MIN_BACKOFF_S
        while True:
            pubsub = self._client.pubsub()
            try:
                await self._session(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if self._ready else logging.DEBUG
                _log.log(level, "Redis pub/sub connection lost (%s); reconnecting", exc)
            finally:
                if self._ready:
                    backoff = MIN_BACKOFF_S
                self._ready = False
                self._confirmed.clear()
                async with self._lock:
                    self._pubsub = None
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _session(self, pubsub: PubSub) -> None:
        async with self._lock:
            self._pubsub = pubsub
            await pubsub.subscribe(self._control_channel, self._node_channel, *self._wanted)
        loop = asyncio.get_running_loop()
        held: list[tuple[bytes, bytes]] = []
        syncing = True
        heard = loop.time()
        while True:
            raw = await pubsub.get_message(timeout=IDLE_PING_S)
            if raw is None:
                if loop.time() - heard > DEAD_AFTER_S:
                    raise TimeoutError("no answer to pings")
                await pubsub.ping()
                continue
            heard = loop.time()
            kind, channel = raw["type"], raw["channel"]
            if kind == "subscribe":
                self._confirmed.add(channel)
                for waiter in self._waiters.pop(channel, []):
                    if not waiter.done():
                        waiter.set_result(None)
                if syncing and self._complete():
                    await self._catch_up()
                    for held_channel, data in held:
                        await self._dispatch(held_channel, data)
                    held.clear()
                    syncing = False
                    self._ready = True
                    self.sessions += 1
                    await self._sink.synced()
            elif kind == "message":
                if syncing and channel in self._wanted:
                    if len(held) >= MAX_HELD:
                        raise RuntimeError("too many messages while resubscribing")
                    held.append((channel, raw["data"]))
                else:
                    await self._dispatch(channel, raw["data"])

    def _complete(self) -> bool:
        confirmed = self._confirmed
        return (
            self._control_channel in confirmed
            and self._node_channel in confirmed
            and all(name in confirmed for name in self._wanted)
        )

    async def _catch_up(self) -> None:
        for key in list(self._wanted.values()):
            last = self._last.get(key)
            if last is not None:
                await self._fill(key, last)

    async def _fill(self, key: ChannelKey, last: int) -> None:
        missed = await self._sink.fill(key[0], key[1], last)
        if missed is None:
            self._last.pop(key, None)
            self._sink.lost(*key)
            return
        for message in missed:
            self._deliver(key, message)

    def _deliver(self, key: ChannelKey, message: Message) -> None:
        last = self._last.get(key)
        if last is None or message.seq > last:
            self._last[key] = message.seq
            self._sink.message(message)

    async def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            if channel == self._node_channel:
                self._sink.persisted(data)
                return
            if channel == self._control_channel:
                entry_id, _, payload = data.partition(b"|")
                self._sink.control(entry_id.decode(), payload)
                return
            key = self._wanted.get(channel)
            if key is None:
                return
            tag, body = data[:1], data[1:]
            if tag == b"m":
                message = decode_line(body)
                last = self._last.get(key)
                if last is not None and message.seq > last + 1:
                    await self._fill(key, last)  # missed something: read it back first
                self._deliver(key, message)
            elif tag == b"e":
                origin, _, frame = body.partition(b"|")
                self._sink.ephemeral(key[0], key[1], frame, origin.decode())
        except (RedisError, OSError):
            raise
        except Exception:
            _log.exception("dropping a malformed or unhandled pub/sub message")
