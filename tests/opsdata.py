"""Small builders for the keys, backup and erasure tests: a store on real SQLite and
messages written through the persistence path (``Messages.insert_batch``)."""

from __future__ import annotations

import secrets
from pathlib import Path

from server.auth.authority import scope_for_operator, scope_for_system
from storage.ids import new_id, now_ms
from storage.keys import MasterKeyring, TenantKeyStore
from storage.models import Channel, Message, Tenant
from storage.store import Store


def keyring(*versions: int, active: int | None = None) -> MasterKeyring:
    keys = {v: secrets.token_bytes(32) for v in versions or (1,)}
    return MasterKeyring(keys, active if active is not None else max(keys))


async def sqlite_store(directory: Path, ring: MasterKeyring | None = None) -> Store:
    store = Store.from_url(
        f"sqlite:///{directory / 'baychat.db'}",
        ring or keyring(1),
        TenantKeyStore(directory / "keys"),
    )
    await store.open(migrate_schema=True)
    return store


async def tenant_with_channel(store: Store, slug: str | None = None) -> tuple[Tenant, Channel]:
    tenant = await store.tenants.create(slug or f"t-{secrets.token_hex(4)}")
    channel = await store.channels.create(
        scope_for_operator(tenant.id), "general", private=False, created_by="someone"
    )
    return tenant, channel


async def write_messages(
    store: Store, channel: Channel, count: int, *, sender: str = "someone", start: int = 1
) -> list[Message]:
    messages = [
        Message(
            tenant_id=channel.tenant_id,
            channel_id=channel.id,
            channel=channel.name,
            seq=seq,
            id=new_id(),
            sender_id=sender,
            body=f"message {seq} from {sender}",
            sent_at=now_ms(),
        )
        for seq in range(start, start + count)
    ]
    scope = scope_for_system(channel.tenant_id)
    await store.messages.insert_batch([(scope, m) for m in messages])
    return messages


async def bodies(store: Store, channel: Channel) -> list[str]:
    found = await store.messages.after(
        scope_for_operator(channel.tenant_id), channel.id, channel.name, 0, 100_000
    )
    return [m.body for m in found]
