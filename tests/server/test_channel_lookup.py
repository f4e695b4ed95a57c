"""Channel lookups are remembered per tenant; permissions are still checked every time."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import NotFoundError
from server.auth.principal import Principal
from storage.models import Tenant, User
from tests.harness import LiveServer


def principal(tenant: Tenant, user: User) -> Principal:
    return Principal(tenant.id, user.id, "user", user.role, "session", 2**40)


async def test_a_found_channel_is_not_read_again(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat, store = server.runtime.chat, server.runtime.store
    tenant = await server.tenant()
    alice = await server.user(tenant)
    await server.channel(tenant, "general", alice)
    reads: list[str] = []
    by_name = store.channels.by_name

    async def counting(scope: Any, name: str) -> Any:
        reads.append(name)
        return await by_name(scope, name)

    monkeypatch.setattr(store.channels, "by_name", counting)
    for _ in range(3):
        assert (await chat.channel(principal(tenant, alice), "general", "write")).name == "general"
    assert reads == ["general"]


async def test_unknown_names_are_not_remembered_and_tenants_stay_apart(
    server: LiveServer,
) -> None:
    chat = server.runtime.chat
    one, two = await server.tenant(), await server.tenant()
    alice, bob = await server.user(one), await server.user(two)
    with pytest.raises(NotFoundError):
        await chat.channel(principal(one, alice), "later", "read")
    created = await server.channel(one, "later", alice)
    assert (await chat.channel(principal(one, alice), "later", "read")).id == created.id
    # The same name in another tenant is that tenant's business: not found there.
    with pytest.raises(NotFoundError):
        await chat.channel(principal(two, bob), "later", "read")


async def test_private_membership_is_checked_on_every_lookup(server: LiveServer) -> None:
    chat = server.runtime.chat
    tenant = await server.tenant()
    member, outsider = await server.user(tenant), await server.user(tenant)
    secret = await server.channel(tenant, "secret", member, private=True)
    await server.add_member(tenant, secret, member)
    assert (await chat.channel(principal(tenant, member), "secret", "read")).id == secret.id
    with pytest.raises(NotFoundError):
        await chat.channel(principal(tenant, outsider), "secret", "read")
    await server.add_member(tenant, secret, outsider)
    assert (await chat.channel(principal(tenant, outsider), "secret", "read")).id == secret.id
