"""One gateway process on the Redis broker with its worker embedded: the same chat as on
the in-process broker (the Redis broker is also the log the embedded worker drains)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import (
    LiveServer,
    expect_messages,
    live_server,
    make_settings,
    publish,
    subscribe,
)
from tests.server.broker.rig import drop_namespace, redis_url


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    url = await redis_url()
    try:
        async with live_server(make_settings(tmp_path, broker_url=url)) as live:
            yield live
    finally:
        await drop_namespace(url)


async def test_chat_and_recovery_through_redis_with_an_embedded_worker(
    redis_server: LiveServer,
) -> None:
    server = redis_server
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
    await subscribe(wb, "general")

    acks = [await publish(wa, "general", f"m{i}", client_msg_id=f"c{i}") for i in range(3)]
    seen = await expect_messages(wb, 3)
    assert [m["seq"] for m in seen] == [a["seq"] for a in acks] == [1, 2, 3]
    await wb.close()
    for i in range(3, 6):
        await publish(wa, "general", f"m{i}")
    retry = await publish(wa, "general", "m0", client_msg_id="c0")
    assert retry["duplicate"] is True
    assert retry["message_id"] == acks[0]["message_id"]

    wb2 = await server.session(tenant, bob)
    subscribed = await subscribe(wb2, "general", since=3)
    assert subscribed["recovered"] is True
    missed = await expect_messages(wb2, 3)
    assert [(m["seq"], m["body"]) for m in missed] == [(4, "m3"), (5, "m4"), (6, "m5")]
