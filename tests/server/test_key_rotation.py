"""Key rotation on a running server: it picks up rotated key files; a new master key version
is used for new writes once active while old messages still decrypt; a new JWT key signs new
tokens while tokens of the previous one verify until it is retired."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import jwt
import pytest

from protocol.codes import CloseCode
from server.broker.base import ControlEvent
from server.keyfiles import editing_jwt_keys, editing_master_keys, save_jwt_keys, save_master_keys
from server.runtime import TENANT_DELETED
from storage.keys import KeyringError
from storage.rewrap import key_version_counts
from tests.harness import (
    LiveServer,
    assert_closed,
    expect,
    live_server,
    make_settings,
    publish,
    send,
    subscribe,
)


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_master_key_rotation_is_picked_up_by_a_running_server(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    await server.channel(tenant, "general", alice)
    ws = await server.session(tenant, alice)
    await publish(ws, "general", "under version 1")

    with editing_master_keys(server.settings) as ring:
        save_master_keys(server.settings, ring.rotated(grace_s=0.3))
    runtime = server.runtime
    assert runtime.keys is not None
    assert runtime.keys.check() == ["master-keys"]
    await publish(ws, "general", "still version 1: version 2 is pending")
    await asyncio.sleep(0.35)
    await publish(ws, "general", "under version 2")

    assert await key_version_counts(runtime.store.engine) == {1: 2, 2: 1}
    await subscribe(ws, "general")
    await send(ws, {"type": "history", "channel": "general", "id": "h"})
    history = await expect(ws, "history", skip=("presence", "message", "ack"))
    assert len(history["messages"]) == 3


async def test_jwt_rotation_old_tokens_verify_until_retired(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    old_tokens = await server.login(tenant, alice)
    old_kid = kid_of(old_tokens["access_token"])
    settings = server.settings
    assert server.runtime.keys is not None

    with editing_jwt_keys(settings) as keys:
        rotated = keys.rotated(grace_s=0.3)
        save_jwt_keys(settings, rotated)
    assert server.runtime.keys.check() == ["jwt-keys"]
    assert kid_of((await server.login(tenant, alice))["access_token"]) == old_kid
    await asyncio.sleep(0.35)
    new_tokens = await server.login(tenant, alice)
    assert kid_of(new_tokens["access_token"]) == rotated.pending != old_kid

    # Both verify while tokens signed by the old key may be live.
    await server.connect(old_tokens["access_token"])
    await server.connect(new_tokens["access_token"])
    with pytest.raises(KeyringError, match="may still be valid"):
        rotated.without(old_kid, access_ttl_s=settings.access_ttl_s)

    # Once the access TTL has passed since the old key stopped signing, it can be retired.
    with editing_jwt_keys(settings) as keys:
        aged = dataclasses.replace(keys, stopped={old_kid: time.time() - 3600})
        save_jwt_keys(settings, aged.without(old_kid, access_ttl_s=settings.access_ttl_s))
    assert server.runtime.keys.check() == ["jwt-keys"]
    await server.connect(new_tokens["access_token"])
    refused = await server.connect()
    await send(refused, {"type": "auth", "token": old_tokens["access_token"]})
    await assert_closed(refused, CloseCode.UNAUTHORIZED)


async def test_a_running_server_polls_for_rotated_keys(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path, key_reload_s=0.05)) as server:
        with editing_master_keys(server.settings) as ring:
            save_master_keys(server.settings, ring.rotated(grace_s=60))
        cipher = server.runtime.store.cipher
        for _ in range(100):
            if 2 in cipher.keyring.keys:
                break
            await asyncio.sleep(0.02)
        assert set(cipher.keyring.keys) == {1, 2}
        assert cipher.keyring.active == 1  # pending for a minute


async def test_deleting_a_tenant_closes_its_sockets_and_forgets_its_keys(
    server: LiveServer,
) -> None:
    doomed, other = await server.tenant(), await server.tenant()
    alice, bob = await server.user(doomed), await server.user(other)
    await server.channel(doomed, "general", alice)
    await server.channel(other, "general", bob)
    wa, wb = await server.session(doomed, alice), await server.session(other, bob)
    await publish(wa, "general", "soon unreadable")
    await publish(wb, "general", "unaffected")
    runtime = server.runtime
    assert runtime.keys is not None

    runtime.store.cipher.keystore.destroy(doomed.id)  # as `baychat tenant delete` does first
    assert runtime.keys.check() == [f"tenant-shredded:{doomed.id}"]
    await runtime.broker.publish_control(ControlEvent(TENANT_DELETED, doomed.id, doomed.id))
    await assert_closed(wa, CloseCode.REVOKED)
    await publish(wb, "general", "still chatting")
