"""The Store contract, run against every engine: a behaviour that differs is a bug.

Scopes come from server.auth.authority, as they do in the server. Cross-tenant cases check
that an id or name of tenant A, used through tenant B's scope, behaves exactly like one that
does not exist.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import pytest

from protocol.codes import ErrorCode
from protocol.errors import AuthError, ConflictError, NotFoundError, TenantIsolationError
from server.auth.authority import scope_for_login, scope_for_operator, scope_for_system
from storage.crypto import DecryptionError
from storage.ids import new_id, now_ms
from storage.models import Channel, Message, Tenant, User
from storage.scope import TenantScope
from storage.store import Store
from tests.backends import on_every_store

pytestmark = on_every_store

DAY_MS = 24 * 3600 * 1000


@dataclass
class Side:
    """One tenant with an owner and a public channel."""

    tenant: Tenant
    scope: TenantScope
    user: User
    channel: Channel


async def side(store: Store, channel_name: str = "general") -> Side:
    tenant = await store.tenants.create(f"t-{secrets.token_hex(4)}")
    scope = scope_for_operator(tenant.id)
    user = await store.users.create(scope, "alice@example.com", "hash-a", "owner")
    channel = await store.channels.create(scope, channel_name, private=False, created_by=user.id)
    return Side(tenant, scope, user, channel)


def message(
    s: Side, seq: int, body: str | None = None, client_msg_id: str | None = None
) -> Message:
    return Message(
        tenant_id=s.tenant.id,
        channel_id=s.channel.id,
        channel=s.channel.name,
        seq=seq,
        id=new_id(),
        sender_id=s.user.id,
        body=body if body is not None else f"body {seq}",
        sent_at=now_ms() + seq,
        client_msg_id=client_msg_id,
    )


async def write(store: Store, *messages: Message) -> None:
    await store.messages.insert_batch([(scope_for_system(m.tenant_id), m) for m in messages])


# -- tenants ----------------------------------------------------------------------------


async def test_tenant_is_found_by_slug_and_id(store: Store) -> None:
    slug = f"acme-{secrets.token_hex(4)}"
    created = await store.tenants.create(slug, "paid")
    assert await store.tenants.by_slug(slug) == created
    assert await store.tenants.get(created.id) == created
    assert isinstance(created.created_at, int)


async def test_tenant_slug_is_unique_and_unknown_is_not_found(store: Store) -> None:
    slug = f"acme-{secrets.token_hex(4)}"
    await store.tenants.create(slug)
    with pytest.raises(ConflictError):
        await store.tenants.create(slug)
    with pytest.raises(NotFoundError):
        await store.tenants.by_slug("nobody")
    with pytest.raises(NotFoundError):
        await store.tenants.get(new_id())


# -- users ------------------------------------------------------------------------------


async def test_user_round_trips_with_exact_types(store: Store) -> None:
    s = await side(store)
    got = await store.users.get(s.scope, s.user.id)
    assert got == s.user
    assert got.disabled is False
    assert await store.users.by_email(scope_for_login(s.tenant.id), "alice@example.com") == got


async def test_user_email_is_unique_per_tenant_only(store: Store) -> None:
    a, b = await side(store), await side(store)
    with pytest.raises(ConflictError):
        await store.users.create(a.scope, "alice@example.com", "h", "member")
    assert b.user.email == a.user.email


async def test_password_hash_is_replaced(store: Store) -> None:
    s = await side(store)
    await store.users.set_password_hash(s.scope, s.user.id, "hash-b")
    assert (await store.users.get(s.scope, s.user.id)).password_hash == "hash-b"


# -- channels ---------------------------------------------------------------------------


async def test_channel_round_trips_and_name_is_unique_per_tenant(store: Store) -> None:
    a, b = await side(store), await side(store)
    got = await store.channels.by_name(a.scope, "general")
    assert got == a.channel
    assert got.private is False
    with pytest.raises(ConflictError):
        await store.channels.create(a.scope, "general", private=True, created_by=a.user.id)
    assert b.channel.name == a.channel.name
    with pytest.raises(NotFoundError):
        await store.channels.by_name(a.scope, "nowhere")


async def test_members_and_visibility(store: Store) -> None:
    s = await side(store)
    bob = await store.users.create(s.scope, "bob@example.com", "h", "member")
    secret = await store.channels.create(s.scope, "secret", private=True, created_by=s.user.id)
    assert (await store.channels.by_name(s.scope, "secret")).private is True

    assert await store.channels.is_member(s.scope, secret.id, bob.id) is False
    assert [c.name for c in await store.channels.visible_to(s.scope, bob.id)] == ["general"]
    assert await store.channels.add_member(s.scope, secret.id, bob.id) is True
    assert await store.channels.add_member(s.scope, secret.id, bob.id) is False
    assert await store.channels.is_member(s.scope, secret.id, bob.id) is True
    visible = await store.channels.visible_to(s.scope, bob.id)
    assert [c.name for c in visible] == ["general", "secret"]
    assert visible[1] == secret


# -- messages ---------------------------------------------------------------------------


async def test_insert_batch_is_idempotent_on_message_id(store: Store) -> None:
    s = await side(store)
    batch = [message(s, seq) for seq in (1, 2, 3)]
    await write(store, *batch)
    await write(store, *batch)  # a replay after a crash between commit and ack
    await write(store, batch[1], message(s, 4))
    stored = await store.messages.after(s.scope, s.channel.id, s.channel.name, 0, 100)
    assert [m.seq for m in stored] == [1, 2, 3, 4]
    assert stored[:3] == batch


async def test_messages_are_read_back_decrypted_and_stored_encrypted(store: Store) -> None:
    s = await side(store)
    sent = message(s, 1, body="the eagle lands at dawn ✓", client_msg_id="c-1")
    await write(store, sent)
    [got] = await store.messages.after(s.scope, s.channel.id, s.channel.name, 0, 10)
    assert got == sent
    async with store.engine.transaction("test_raw_envelope", tenant_id=s.tenant.id) as tx:
        envelope = await tx.fetchval("SELECT envelope FROM messages WHERE id = $1", sent.id)
    assert isinstance(envelope, bytes)
    assert sent.body.encode() not in envelope
    assert store.cipher.decrypt(s.tenant.id, s.channel.id, sent.id, envelope) == sent.body.encode()


async def test_after_is_oldest_first_and_limited(store: Store) -> None:
    s = await side(store)
    await write(store, *[message(s, seq) for seq in range(1, 11)])
    after = store.messages.after
    assert [m.seq for m in await after(s.scope, s.channel.id, "general", 0, 3)] == [1, 2, 3]
    assert [m.seq for m in await after(s.scope, s.channel.id, "general", 7, 100)] == [8, 9, 10]
    assert await after(s.scope, s.channel.id, "general", 10, 100) == []


async def test_before_is_newest_first_and_limited(store: Store) -> None:
    s = await side(store)
    await write(store, *[message(s, seq) for seq in range(1, 11)])
    before = store.messages.before
    assert [m.seq for m in await before(s.scope, s.channel.id, "general", None, 3)] == [10, 9, 8]
    assert [m.seq for m in await before(s.scope, s.channel.id, "general", 3, 100)] == [2, 1]
    assert await before(s.scope, s.channel.id, "general", 1, 100) == []


async def test_last_seq_and_recent_client_ids(store: Store) -> None:
    s = await side(store)
    assert await store.messages.last_seq(s.scope, s.channel.id) == 0
    sent = [message(s, seq, client_msg_id=None if seq % 2 else f"c-{seq}") for seq in range(1, 8)]
    await write(store, *sent)
    assert await store.messages.last_seq(s.scope, s.channel.id) == 7
    recent = await store.messages.recent_client_ids(s.scope, s.channel.id, 2)
    assert [(r.client_msg_id, r.seq) for r in recent] == [("c-6", 6), ("c-4", 4)]
    assert recent[0].message_id == sent[5].id
    assert recent[0].sender_id == s.user.id
    assert recent[0].sent_at == sent[5].sent_at


async def test_one_batch_for_several_tenants_lands_in_each(store: Store) -> None:
    a, b = await side(store), await side(store)
    await write(store, message(a, 1, "for a"), message(b, 1, "for b"), message(a, 2, "a again"))
    in_a = await store.messages.after(a.scope, a.channel.id, "general", 0, 10)
    in_b = await store.messages.after(b.scope, b.channel.id, "general", 0, 10)
    assert [m.body for m in in_a] == ["for a", "a again"]
    assert [m.body for m in in_b] == ["for b"]


async def test_a_batch_spanning_tenants_is_sealed_under_each_tenants_key(store: Store) -> None:
    """One worker batch, interleaved tenants, duplicates inside it and of stored rows: every
    message lands once, in its own tenant, encrypted under that tenant's key only."""
    a, b = await side(store), await side(store)
    early = message(a, 1, "a1")
    await write(store, early)
    batch = [early]  # already stored: skipped
    for seq in range(2, 302):
        batch.append(message(a, seq, f"a{seq}", client_msg_id=f"c{seq}" if seq % 3 else None))
        batch.append(message(b, seq - 1, f"b{seq - 1}"))
    batch.append(batch[5])  # the same entry twice in one batch (a redelivered log entry)
    await write(store, *batch)

    in_a = await store.messages.after(a.scope, a.channel.id, "general", 0, 1000)
    in_b = await store.messages.after(b.scope, b.channel.id, "general", 0, 1000)
    assert [m.seq for m in in_a] == list(range(1, 302))
    assert [m.seq for m in in_b] == list(range(1, 301))
    assert [m.body for m in in_a] == [f"a{seq}" for seq in range(1, 302)]
    assert in_a[4].client_msg_id == "c5"
    assert in_a[5].client_msg_id is None
    async with store.engine.transaction("test_raw_envelope", tenant_id=b.tenant.id) as tx:
        envelope = await tx.fetchval("SELECT envelope FROM messages WHERE id = $1", in_b[0].id)
    assert store.cipher.decrypt(b.tenant.id, b.channel.id, in_b[0].id, envelope) == b"b1"
    with pytest.raises(DecryptionError):  # A's key does not open B's message
        store.cipher.decrypt(a.tenant.id, b.channel.id, in_b[0].id, envelope)


async def test_a_batch_entry_under_a_foreign_scope_is_refused(store: Store) -> None:
    a, b = await side(store), await side(store)
    with pytest.raises(TenantIsolationError):
        await store.messages.insert_batch([(b.scope, message(a, 1))])
    assert await store.messages.last_seq(a.scope, a.channel.id) == 0


# -- sessions ---------------------------------------------------------------------------


def tok(s: Side, name: str) -> str:
    """A refresh-token digest unique to this test's tenant (digests are globally unique)."""
    return f"{s.tenant.id}/{name}"


async def new_session(store: Store, s: Side, name: str = "t0", lifetime_ms: int = DAY_MS) -> str:
    session = await store.sessions.create(
        scope_for_login(s.tenant.id),
        s.user.id,
        tok(s, name),
        lifetime_ms=lifetime_ms,
        user_agent="test/1",
        ip="127.0.0.1",
    )
    return session.id


async def test_session_is_created_and_listed_newest_first(store: Store) -> None:
    s = await side(store)
    first = await new_session(store, s, "t1")
    second = await new_session(store, s, "t2")
    got = await store.sessions.get(s.scope, first)
    assert (got.user_id, got.revoked_at, got.user_agent, got.ip) == (
        s.user.id,
        None,
        "test/1",
        "127.0.0.1",
    )
    assert got.expires_at == got.created_at + DAY_MS
    listed = await store.sessions.for_user(s.scope, s.user.id)
    assert [x.id for x in listed] in ([second, first], [first, second])
    assert listed[0].created_at >= listed[1].created_at


async def test_rotation_issues_a_new_token_once(store: Store) -> None:
    s = await side(store)
    session_id = await new_session(store, s, "t0")
    rotation = await store.sessions.rotate(s.scope, tok(s, "t0"), tok(s, "t1"))
    assert (rotation.session.id, rotation.reused) == (session_id, False)
    again = await store.sessions.rotate(s.scope, tok(s, "t1"), tok(s, "t2"))
    assert again.reused is False
    assert (await store.sessions.get(s.scope, session_id)).revoked_at is None


async def test_reusing_a_token_revokes_the_session(store: Store) -> None:
    s = await side(store)
    session_id = await new_session(store, s, "t0")
    await store.sessions.rotate(s.scope, tok(s, "t0"), tok(s, "t1"))
    replay = await store.sessions.rotate(s.scope, tok(s, "t0"), tok(s, "stolen"))
    assert replay.reused is True
    assert replay.session.revoked_at is not None
    assert (await store.sessions.get(s.scope, session_id)).revoked_at is not None
    with pytest.raises(AuthError) as revoked:
        await store.sessions.rotate(s.scope, tok(s, "t1"), tok(s, "t2"))
    assert revoked.value.code == ErrorCode.REVOKED


async def test_parallel_rotations_of_one_token_have_exactly_one_winner(store: Store) -> None:
    s = await side(store)
    await new_session(store, s, "t0")
    rotations = await asyncio.gather(
        *(store.sessions.rotate(s.scope, tok(s, "t0"), tok(s, f"next-{i}")) for i in range(6))
    )
    winners = [r for r in rotations if not r.reused]
    assert len(winners) == 1
    assert sum(r.reused for r in rotations) == 5


async def test_unknown_or_expired_token_is_refused(store: Store) -> None:
    s = await side(store)
    with pytest.raises(AuthError) as unknown:
        await store.sessions.rotate(s.scope, tok(s, "never-issued"), tok(s, "t1"))
    assert unknown.value.code == ErrorCode.UNAUTHORIZED
    await new_session(store, s, "old", lifetime_ms=-1)
    with pytest.raises(AuthError) as expired:
        await store.sessions.rotate(s.scope, tok(s, "old"), tok(s, "t1"))
    assert expired.value.code == ErrorCode.TOKEN_EXPIRED


async def test_revoke_once(store: Store) -> None:
    s = await side(store)
    session_id = await new_session(store, s)
    assert await store.sessions.revoke(s.scope, session_id) is True
    assert await store.sessions.revoke(s.scope, session_id) is False
    assert (await store.sessions.get(s.scope, session_id)).revoked_at is not None
    with pytest.raises(NotFoundError):
        await store.sessions.get(s.scope, new_id())


# -- across tenants ---------------------------------------------------------------------


async def test_another_tenants_users_and_channels_look_missing(store: Store) -> None:
    a, b = await side(store), await side(store, channel_name="only-in-a")
    a_only = await store.channels.create(a.scope, "a-only", private=False, created_by=a.user.id)
    with pytest.raises(NotFoundError):
        await store.users.get(b.scope, a.user.id)
    with pytest.raises(NotFoundError):
        await store.users.get(b.scope, new_id())
    with pytest.raises(NotFoundError):
        await store.channels.by_name(b.scope, a_only.name)
    assert await store.channels.is_member(b.scope, a.channel.id, a.user.id) is False
    assert [c.name for c in await store.channels.visible_to(b.scope, a.user.id)] == ["only-in-a"]
    await store.users.set_password_hash(b.scope, a.user.id, "hijacked")
    assert (await store.users.get(a.scope, a.user.id)).password_hash == "hash-a"


async def test_another_tenants_messages_look_missing(store: Store) -> None:
    a, b = await side(store), await side(store)
    await write(store, message(a, 1, client_msg_id="c-1"))
    assert await store.messages.after(b.scope, a.channel.id, "general", 0, 10) == []
    assert await store.messages.before(b.scope, a.channel.id, "general", None, 10) == []
    assert await store.messages.last_seq(b.scope, a.channel.id) == 0
    assert await store.messages.recent_client_ids(b.scope, a.channel.id, 10) == []


async def test_another_tenants_sessions_look_missing(store: Store) -> None:
    a, b = await side(store), await side(store)
    session_id = await new_session(store, a, "a-token")
    with pytest.raises(NotFoundError):
        await store.sessions.get(b.scope, session_id)
    assert await store.sessions.for_user(b.scope, a.user.id) == []
    assert await store.sessions.revoke(b.scope, session_id) is False
    with pytest.raises(AuthError) as refused:
        await store.sessions.rotate(b.scope, tok(a, "a-token"), tok(b, "b-token"))
    assert refused.value.code == ErrorCode.UNAUTHORIZED
    # Nothing of A was touched: its token still rotates and its session is live.
    assert (await store.sessions.rotate(a.scope, tok(a, "a-token"), tok(a, "next"))).reused is False
    assert (await store.sessions.get(a.scope, session_id)).revoked_at is None


async def test_a_foreign_row_reaching_a_scope_is_fatal(store: Store) -> None:
    a, b = await side(store), await side(store)
    async with store.engine.transaction("test_row", tenant_id=a.tenant.id) as tx:
        row = await tx.fetchrow("SELECT * FROM users WHERE id = $1", a.user.id)
    assert row is not None
    assert a.scope.check(row) is row
    with pytest.raises(TenantIsolationError):
        b.scope.check(row)
    with pytest.raises(TenantIsolationError):
        b.scope.check_all([row])
