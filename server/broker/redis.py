"""Redis broker: fan-out between gateway nodes, and the durable persistence log.

Publishing is one Lua script (``redis_scripts.PUBLISH``): the idempotency check on
(sender, client_msg_id), the channel's next seq, the append to the tenant's log stream,
the channel's recent window and the PUBLISH for fan-out happen as one step. Fan-out
therefore happens at publish time, in seq order per channel, and only for messages that
are in the log: Redis must run with ``appendonly yes`` and ``appendfsync always`` so that
a message a client has seen is never lost with Redis (see docs/OPERATIONS.md).

The publishes a node makes while its previous batch is in Redis go out together, in call
order, as one pipeline (``redis_batch.ScriptBatcher``): one round trip for many publishes,
and seqs in the order publish was called. A draft may carry the sender's shared rate-limit
budget, which the script spends (or refuses the publish) in the same step.

When a channel's seq key is missing (a new channel, or Redis lost its state) the broker
seeds it from the store with SET NX before publishing, together with the store's recent
idempotency records, so a seq is never reused as long as the log itself was not lost.

Message bodies sit in Redis in plaintext while they are in flight (log, window, pub/sub)
and for as long as the recent window keeps them; the store encrypts them. Redis is not
the system of record, but its append-only file is on disk: keep it on an encrypted volume
on the private network (docs/OPERATIONS.md).

Acks: a worker that committed entries tells their origin node on its ``node`` channel. A
node also remembers what it published and is still waiting for; every few seconds, and
whenever its connection comes back, it asks Redis which of those entries have left the
log (only a commit deletes them) and reports those as persisted. That covers a
notification lost with a connection or a worker that died between commit and notice, and
a retried publish on another node than the original one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from protocol.errors import RateLimitedError, UnavailableError
from server.broker.base import Broker, BrokerHandler, ControlEvent, Draft, Published, SeedSource
from server.broker.redis_batch import ScriptArgs, ScriptBatcher, pack
from server.broker.redis_fanout import Fanout
from server.broker.redis_keys import (
    GROUP,
    Namespace,
    TenantKeys,
    decode_ids,
    decode_line,
    encode_fields,
)
from server.broker.redis_log import RedisLog
from server.broker.redis_scripts import CONTROL, PENDING, PUBLISH, RECENT
from storage.ids import new_message_id, now_ms
from storage.models import Message
from storage.worker import LogEntry, PersistenceLog

_log = logging.getLogger("baychat.broker.redis")

SWEEP_EVERY_S = 1.0
SWEEP_BATCH = 1000
MAX_UNACKED = 100_000
CONTROL_LOG_LEN = 10_000
MAX_CHANNEL_PARTS = 10_000  # channels whose packed publish parts are kept
_PUBLISH_ARGS = 21  # the number of keys, 6 keys, 14 arguments
_ChannelParts = tuple[TenantKeys, bytes, bytes]  # keys, packed keys, packed constant arguments
_control_codec = msgspec.json.Encoder()
_ControlFields = tuple[str, str, str, str]  # kind, tenant, subject, origin node
_control_decoder = msgspec.json.Decoder(_ControlFields)


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Tuning read from the broker URL's query string (``?namespace=...&window=...``)."""

    namespace: str = "baychat"
    window: int = 256  # messages per channel kept for fast recovery (up to an eighth more)
    window_ttl_s: int = 24 * 3600  # a window expires this long after its last trim
    idempotency_ttl_s: int = 24 * 3600  # how long a client_msg_id is remembered
    max_backlog: int = 1_000_000  # log entries per tenant before publishing is refused
    claim_idle_ms: int = 30_000  # a pending entry idle this long is claimed by a live worker

    @classmethod
    def split_url(cls, url: str) -> tuple[str, RedisOptions]:
        """The URL for redis-py (our parameters removed) and our options."""
        parts = urlsplit(url)
        ours: dict[str, Any] = {}
        theirs: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in cls.__dataclass_fields__:
                ours[name] = value if name == "namespace" else int(value)
            else:
                theirs.append((name, value))
        options = cls(**ours)
        if options.window < 1 or options.max_backlog < 1:
            raise ValueError("window and max_backlog must be positive")
        if not options.namespace or any(c in options.namespace for c in "{}: "):
            raise ValueError("namespace: letters, digits, dashes")
        return urlunsplit(parts._replace(query=urlencode(theirs))), options


def connect(url: str, *, retry: bool = False) -> Redis:
    """A client whose errors surface to the caller. Without retries a publish is never
    run twice behind our back, and the pub/sub listener sees every lost connection."""
    client: Redis = Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 1 if retry else 0),
        socket_connect_timeout=2,
        socket_timeout=10,
        socket_keepalive=True,
    )
    return client


@dataclass(slots=True)
class _Unacked:
    message: Message
    entry_id: str
    epoch: bytes
    since: float


class RedisBroker:
    def __init__(self, url: str, seed: SeedSource, *, node_id: str = "local") -> None:
        self.node_id = node_id
        redis_url, self.options = RedisOptions.split_url(url)
        self._redis_url = redis_url
        self._seed = seed
        self._names = Namespace(self.options.namespace)
        self._client = connect(redis_url)
        self._batcher = ScriptBatcher(
            self._client,
            PUBLISH,
            retry_tag=b"noseq",
            before_retry=self._seed_channels,
            error=_unavailable,
        )
        self._recent_script = self._client.register_script(RECENT)
        self._pending_script = self._client.register_script(PENDING)
        self._control_script = self._client.register_script(CONTROL)
        self._epoch = secrets.token_hex(8).encode()
        self._channels: dict[tuple[str, str], _ChannelParts] = {}
        self._handler: BrokerHandler | None = None
        self._fanout: Fanout | None = None
        self._pubsub_client: Redis | None = None
        self._unacked: OrderedDict[str, _Unacked] = OrderedDict()
        self._control_seen: tuple[int, int] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._log: RedisLog | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler
        self._pubsub_client = connect(self._redis_url)
        self._fanout = Fanout(self._pubsub_client, self._names, self.node_id, self)
        self._fanout.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="redis-ack-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._fanout is not None:
            await self._fanout.close()
            self._fanout = None
        if self._pubsub_client is not None:
            await self._pubsub_client.aclose()
            self._pubsub_client = None
        self._handler = None
        if self._log is not None:
            await self._log.close()
        await self._batcher.close()
        await self._client.aclose()

    def ready(self) -> bool:
        return self._handler is not None and self._fanout is not None and self._fanout.ready

    # -- publishing ---------------------------------------------------------------------

    def publish_now(self, draft: Draft) -> Published | None:
        return None  # every publish is a round trip to Redis

    def publish(self, draft: Draft) -> asyncio.Future[Published]:
        # Queued in the caller's step, before anything else can run: publishes reach Redis
        # in call order, and a caller may take the answer by a done callback (no task).
        channel = self._channels.get((draft.tenant_id, draft.channel_id))
        if channel is None:
            channel = self._channel_parts(draft.tenant_id, draft.channel_id)
        keys, keys_part, constant_part = channel
        message_id = new_message_id()
        sent_at = now_ms()
        cmid = draft.client_msg_id
        budget = draft.budget
        message_part = pack(
            keys.idem(draft.channel_id, draft.sender_id, cmid) if cmid else f"{keys.base}:-",
            budget.key if budget else f"{keys.base}:-",
            encode_fields(draft, message_id, sent_at),
            self.options.idempotency_ttl_s if cmid else "",
            message_id,
            sent_at,
            *((time.time(), budget.limit, budget.window_s) if budget else ("", "", "")),
        )
        return self._batcher.submit(
            ScriptArgs(_PUBLISH_ARGS, keys_part + message_part + constant_part),
            (draft.tenant_id, draft.channel_id),
            partial(self._published, draft, message_id, sent_at),
        )

    def _channel_parts(self, tenant_id: str, channel_id: str) -> _ChannelParts:
        """The publish script's keys and arguments that are the same for every publish of
        a channel from this node, packed once (``redis_scripts.PUBLISH``)."""
        if len(self._channels) >= MAX_CHANNEL_PARTS:
            self._channels.clear()
        keys = self._names.tenant(tenant_id)
        options = self.options
        parts = (
            keys,
            pack(6, keys.seq(channel_id), keys.window(channel_id), keys.log, keys.epoch),
            pack(
                self.node_id,
                keys.fanout(channel_id),
                options.window,
                options.window_ttl_s,
                self._epoch,
                options.max_backlog,
                GROUP,
            ),
        )
        self._channels[(tenant_id, channel_id)] = parts
        return parts

    def _published(self, draft: Draft, message_id: str, sent_at: int, reply: Any) -> Published:
        """The publish script's reply as the caller's answer (run by the batcher)."""
        tag = reply[0]
        budget = draft.budget
        if tag == b"limited" and budget is not None:
            raise budget.refused(float(reply[1]) + budget.window_s)
        if tag == b"full":
            raise RateLimitedError(5.0, "message backlog is full; retry later")
        if tag == b"dup":
            return self._duplicate(draft, reply[1], bool(reply[2]), reply[3])
        if tag != b"ok":
            raise UnavailableError("could not seed the channel's sequence")
        message = _message(draft, int(reply[1]), message_id, sent_at, draft.body)
        self._remember(message, reply[2].decode(), reply[3])
        return Published(message, False, False)

    def _duplicate(self, draft: Draft, record: bytes, pending: bool, epoch: bytes) -> Published:
        seq, message_id, sent_at_text, entry_id = record.decode().split("|")
        # The record keeps no body: a retry only needs the original id and seq.
        original = _message(draft, int(seq), message_id, int(sent_at_text), "")
        if pending:
            # The ack may be owed to another node (the client moved): watch it here too.
            self._remember(original, entry_id, epoch)
        return Published(original, True, not pending)

    async def _seed_channels(self, channels: list[tuple[str, str]]) -> None:
        """Seed channels whose seq Redis does not have (called by the batcher, which then
        runs their publishes again before any later one)."""
        for tenant_id, channel_id in dict.fromkeys(channels):
            await self._seed_channel(self._names.tenant(tenant_id), tenant_id, channel_id)

    async def _seed_channel(self, keys: TenantKeys, tenant_id: str, channel_id: str) -> None:
        seed = await self._seed(tenant_id, channel_id)
        async with self._client.pipeline(transaction=False) as pipe:
            # Listed on every seeding, not once per process: if Redis lost its state, the
            # list was lost with it.
            pipe.sadd(self._names.tenants, tenant_id)
            for record in seed.recent:
                pipe.set(
                    keys.idem(channel_id, record.sender_id, record.client_msg_id),
                    f"{record.seq}|{record.message_id}|{record.sent_at}|",
                    nx=True,
                    ex=self.options.idempotency_ttl_s,
                )
            # NX: another node may have seeded (and published) meanwhile.
            pipe.set(keys.seq(channel_id), seed.last_seq, nx=True)
            await pipe.execute()

    def _remember(self, message: Message, entry_id: str, epoch: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._unacked[message.id] = _Unacked(message, entry_id, epoch, loop.time())
        self._unacked.move_to_end(message.id)
        while len(self._unacked) > MAX_UNACKED:
            self._unacked.popitem(last=False)  # that client never gets its ack: it retries

    # -- fan-out ------------------------------------------------------------------------

    async def subscribe(self, tenant_id: str, channel_id: str) -> None:
        fanout = self._fanout
        if fanout is None:
            raise UnavailableError("broker not started")
        try:
            head = await self._client.get(self._names.tenant(tenant_id).seq(channel_id))
        except RedisError as exc:
            raise UnavailableError("message broker unavailable; retry later") from exc
        await fanout.subscribe((tenant_id, channel_id), int(head or 0))

    async def unsubscribe(self, tenant_id: str, channel_id: str) -> None:
        if self._fanout is not None:
            await self._fanout.unsubscribe((tenant_id, channel_id))

    async def publish_ephemeral(
        self, tenant_id: str, channel_id: str, frame: bytes, origin: str
    ) -> None:
        name = self._names.tenant(tenant_id).fanout(channel_id)
        try:
            await self._client.publish(name, b"e" + origin.encode() + b"|" + frame)
        except RedisError:
            _log.debug("ephemeral frame dropped: Redis unavailable")  # best effort

    async def publish_control(self, event: ControlEvent) -> None:
        # Applied here first, so this node never depends on Redis for its own events.
        if self._handler is not None:
            self._handler.on_control(event)
        payload = _control_codec.encode((event.kind, event.tenant_id, event.subject, self.node_id))
        try:
            await self._control_script(
                keys=[self._names.control_log],
                args=[self._names.control, payload, CONTROL_LOG_LEN],
            )
        except RedisError as exc:
            raise UnavailableError("could not reach the other nodes; retry later") from exc

    async def recent(self, tenant_id: str, channel_id: str, since: int) -> list[Message] | None:
        try:
            return await self.fill(tenant_id, channel_id, since)
        except RedisError as exc:
            raise UnavailableError("message broker unavailable; retry later") from exc

    async def forget_recent(self, tenant_id: str) -> None:
        pattern = self._names.tenant(tenant_id).window("*")
        try:
            batch: list[Any] = []
            async for key in self._client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await self._client.delete(*batch)
                    batch = []
            if batch:
                await self._client.delete(*batch)
        except RedisError as exc:
            raise UnavailableError("message broker unavailable; retry later") from exc

    # -- FanoutSink ---------------------------------------------------------------------

    def message(self, message: Message) -> None:
        if self._handler is not None:
            self._handler.on_message(message)

    def ephemeral(self, tenant_id: str, channel_id: str, frame: bytes, origin: str) -> None:
        if self._handler is not None:
            self._handler.on_ephemeral(tenant_id, channel_id, frame, origin)

    def persisted(self, notice: bytes) -> None:
        # Most messages of a notice are ones this node remembers: only the others are
        # decoded (decoding every line was a tenth of the gateway's loop at 10,000 msgs/s).
        messages: list[Message] = []
        unacked = self._unacked
        for message_id, line in decode_ids(notice):
            item = unacked.pop(message_id, None)
            messages.append(decode_line(line.encode()) if item is None else item.message)
        if self._handler is not None:
            self._handler.on_persisted(messages)

    def _stored(self, messages: list[Message]) -> None:
        for message in messages:
            self._unacked.pop(message.id, None)
        if self._handler is not None:
            self._handler.on_persisted(messages)

    def control(self, entry_id: str, payload: bytes) -> None:
        position = _entry_position(entry_id)
        if self._control_seen is not None and position <= self._control_seen:
            return  # replayed already
        self._control_seen = position
        kind, tenant_id, subject, origin = _control_decoder.decode(payload)
        if origin != self.node_id and self._handler is not None:
            self._handler.on_control(ControlEvent(kind, tenant_id, subject))

    async def fill(self, tenant_id: str, channel_id: str, since: int) -> list[Message] | None:
        keys = self._names.tenant(tenant_id)
        reply = await self._recent_script(
            keys=[keys.seq(channel_id), keys.window(channel_id)], args=[since]
        )
        if reply[0] != b"ok":
            return None
        return [decode_line(line) for line in reply[1:]]

    def lost(self, tenant_id: str, channel_id: str) -> None:
        _log.warning("fan-out gap beyond the recent window; subscribers must resubscribe")
        if self._handler is not None:
            self._handler.on_control(ControlEvent("channel_resync", tenant_id, channel_id))

    async def synced(self) -> None:
        await self._replay_control()
        await self._sweep(everything=True)

    async def _replay_control(self) -> None:
        name = self._names.control_log
        if self._control_seen is None:
            newest: Any = await self._client.xrevrange(name, count=1)
            self._control_seen = _entry_position(newest[0][0].decode()) if newest else (0, 0)
            return
        start = "({}-{}".format(*self._control_seen)
        entries: Any = await self._client.xrange(name, min=start)
        for entry_id, fields in entries:
            self.control(entry_id.decode(), fields[b"e"])

    # -- acks that no notification brought ----------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            if not self.ready():
                continue
            try:
                await self._sweep(everything=False)
            except RedisError:
                continue
            except Exception:
                _log.exception("ack sweep failed")

    async def _sweep(self, *, everything: bool) -> None:
        """Report as persisted the remembered messages whose entries left the log."""
        horizon = asyncio.get_running_loop().time() - (0 if everything else SWEEP_EVERY_S)
        by_tenant: dict[str, list[_Unacked]] = {}
        for count, item in enumerate(self._unacked.values()):
            if item.since > horizon or count >= SWEEP_BATCH:
                break
            by_tenant.setdefault(item.message.tenant_id, []).append(item)
        if not by_tenant:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for tenant_id, items in by_tenant.items():
                keys = self._names.tenant(tenant_id)
                await self._pending_script(
                    keys=[keys.log, keys.epoch], args=[i.entry_id for i in items], client=pipe
                )
            replies = await pipe.execute()
        stored: list[Message] = []
        for items, reply in zip(by_tenant.values(), replies, strict=True):
            epoch, present = reply[0], reply[1:]
            for item, still_there in zip(items, present, strict=True):
                if epoch != item.epoch:
                    # Redis lost this tenant's state since the publish: absence proves
                    # nothing. Forget it; the client retries with its client_msg_id.
                    self._unacked.pop(item.message.id, None)
                elif not still_there:
                    stored.append(item.message)
        if stored:
            self._stored(stored)

    # -- PersistenceLog (a worker embedded in this process) -----------------------------

    def consumer(self, name: str | None = None) -> RedisLog:
        return RedisLog(
            self._client,
            self._names,
            name or self.node_id,
            claim_idle_ms=self.options.claim_idle_ms,
        )

    async def read(self, max_count: int, block_ms: int) -> list[LogEntry]:
        if self._log is None:
            self._log = self.consumer()
        return await self._log.read(max_count, block_ms)

    async def done(self, entries: Sequence[LogEntry]) -> None:
        if self._log is None:
            self._log = self.consumer()
        await self._log.done(entries)


def open_redis_log(url: str, *, consumer: str) -> RedisLog:
    """A worker's own connection to the log of the deployment at ``url``."""
    redis_url, options = RedisOptions.split_url(url)
    return RedisLog(
        connect(redis_url),
        Namespace(options.namespace),
        consumer,
        claim_idle_ms=options.claim_idle_ms,
        owns_client=True,
    )


def _message(draft: Draft, seq: int, message_id: str, sent_at: int, body: str) -> Message:
    """The message a draft became, as the publish script's reply describes it."""
    return Message(
        tenant_id=draft.tenant_id,
        channel_id=draft.channel_id,
        channel=draft.channel,
        seq=seq,
        id=message_id,
        sender_id=draft.sender_id,
        body=body,
        sent_at=sent_at,
        client_msg_id=draft.client_msg_id,
    )


def _unavailable(error: BaseException) -> BaseException:
    if isinstance(error, RedisError):
        return UnavailableError("message broker unavailable; retry later")
    return error


def _entry_position(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


_check: type[Broker] = RedisBroker
_log_check: type[PersistenceLog] = RedisBroker
