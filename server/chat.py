"""Channel access and the message operations shared by the WebSocket and HTTP paths."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable
from typing import Literal

from protocol.errors import ForbiddenError, NotFoundError
from server.auth import scopes
from server.auth.authority import scope_for, scope_for_system
from server.auth.principal import Principal
from server.broker.base import (
    Broker,
    ChannelSeed,
    Draft,
    Published,
    SeedSource,
    SharedBudget,
)
from storage.models import Channel, Message
from storage.store import Store

Action = Literal["read", "history", "write", "presence"]
IDEMPOTENCY_SEED = 1000
KNOWN_CHANNELS = 10_000  # per process; a Channel record is a few hundred bytes


class Chat:
    def __init__(self, store: Store, broker: Broker, *, recovery_limit: int) -> None:
        self.store = store
        self.broker = broker
        self.recovery_limit = recovery_limit
        # Channel records never change once created (there is no rename, deletion or change
        # of privacy), so a lookup by name is remembered: it was most of a publish's cost
        # (docs/BENCHMARKS.md). Whoever adds such a change must call ``forget_channel``.
        # Keys carry the verified tenant id; permission checks are never cached.
        self._known: OrderedDict[tuple[str, str], Channel] = OrderedDict()

    async def channel(self, principal: Principal, name: str, action: Action) -> Channel:
        """The channel ``name`` if ``principal`` may do ``action`` on it.

        A private channel the caller is not a member of, and any channel of another tenant,
        is reported exactly like one that does not exist. An agent sees only the channels
        its token's scopes reach (``server.auth.scopes``), and may do only the actions they
        grant there.
        """
        if principal.kind == "agent":
            grants = principal.scopes or ()
            if not scopes.mentions(grants, name):
                raise NotFoundError("no such channel")  # decided before any lookup
            channel = self._known.get((principal.tenant_id, name)) or await self._by_name(
                principal, name
            )
            if not scopes.mentions(grants, name, private=channel.private):
                raise NotFoundError("no such channel")
            if not scopes.permits(grants, name, action, private=channel.private):
                raise ForbiddenError(f"this token does not allow {action} on this channel")
            return channel
        if principal.kind != "user":
            raise ForbiddenError("not allowed on this channel")
        # A remembered channel is taken without a coroutine: this runs on every publish.
        channel = self._known.get((principal.tenant_id, name)) or await self._by_name(
            principal, name
        )
        if channel.private and not await self.store.channels.is_member(
            scope_for(principal), channel.id, principal.id
        ):
            raise NotFoundError("no such channel")
        return channel

    async def _by_name(self, principal: Principal, name: str) -> Channel:
        key = (principal.tenant_id, name)
        channel = self._known.get(key)
        if channel is None:
            channel = await self.store.channels.by_name(scope_for(principal), name)
            self._known[key] = channel
            if len(self._known) > KNOWN_CHANNELS:
                self._known.popitem(last=False)
        return channel

    def forget_channel(self, tenant_id: str, name: str) -> None:
        self._known.pop((tenant_id, name), None)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop what is remembered of a deleted tenant's channels."""
        for key in [k for k in self._known if k[0] == tenant_id]:
            del self._known[key]

    def publish(
        self,
        principal: Principal,
        channel: Channel,
        body: str,
        client_msg_id: str | None,
    ) -> Awaitable[Published]:
        """A publish through the HTTP API (a WebSocket session builds its ``draft`` with
        its shared budget and uses ``publish_now``/``publish_draft``)."""
        return self.broker.publish(draft(principal, channel, body, client_msg_id, None))

    def publish_draft(self, draft: Draft) -> Awaitable[Published]:
        return self.broker.publish(draft)

    def publish_now(self, draft: Draft) -> Published | None:
        """``publish`` done at once where the broker can (``Broker.publish_now``), else None."""
        return self.broker.publish_now(draft)

    async def after(
        self, principal: Principal, channel: Channel, since: int, limit: int
    ) -> list[Message]:
        """Messages after ``since``, oldest first: the broker's recent window if it reaches
        back far enough, else the store."""
        recent = await self.broker.recent(principal.tenant_id, channel.id, since)
        if recent is not None:
            return recent[:limit]
        stored = await self.store.messages.after(
            scope_for(principal), channel.id, channel.name, since, limit
        )
        if len(stored) < limit:
            # The store trails the broker by what the workers have not written yet; a
            # broker that fans out before persisting still has that tail in its window.
            tail = await self.broker.recent(
                principal.tenant_id, channel.id, stored[-1].seq if stored else since
            )
            if tail:
                stored.extend(tail[: limit - len(stored)])
        return stored

    async def head(self, principal: Principal, channel: Channel) -> int:
        return await self.store.messages.last_seq(scope_for(principal), channel.id)

    async def history(
        self, principal: Principal, channel: Channel, before: int | None, limit: int
    ) -> list[Message]:
        return await self.store.messages.before(
            scope_for(principal), channel.id, channel.name, before, limit
        )


def draft(
    principal: Principal,
    channel: Channel,
    body: str,
    client_msg_id: str | None,
    budget: SharedBudget | None,
) -> Draft:
    """What a publish by ``principal`` hands the broker."""
    return Draft(
        tenant_id=principal.tenant_id,
        channel_id=channel.id,
        channel=channel.name,
        sender_id=principal.id,
        body=body,
        client_msg_id=client_msg_id,
        budget=budget,
    )


def seed_source(store: Store) -> SeedSource:
    """What a broker needs to continue a channel it has no state for."""

    async def seed(tenant_id: str, channel_id: str) -> ChannelSeed:
        scope = scope_for_system(tenant_id)
        return ChannelSeed(
            last_seq=await store.messages.last_seq(scope, channel_id),
            recent=await store.messages.recent_client_ids(scope, channel_id, IDEMPOTENCY_SEED),
        )

    return seed
