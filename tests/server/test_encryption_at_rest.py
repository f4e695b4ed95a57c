"""What reaches the SQLite file: never a message body in plain text."""

from __future__ import annotations

import sqlite3

from storage.crypto import DecryptionError
from tests.harness import LiveServer, publish, subscribe


async def test_sqlite_file_never_holds_a_plaintext_body(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    await server.channel(tenant, "general", alice)
    ws = await server.session(tenant, alice)
    await subscribe(ws, "general")
    canary = "canary-7f3a9c-plaintext-must-not-hit-disk"
    for i in range(5):
        await publish(ws, "general", f"{canary} {i}")
    await server.stop()

    db_dir = server.settings.data_dir
    for path in db_dir.glob("baychat.db*"):
        assert canary.encode() not in path.read_bytes(), path.name


async def test_a_ciphertext_moved_to_another_row_fails_to_decrypt(server: LiveServer) -> None:
    tenant_a, tenant_b = await server.tenant(), await server.tenant()
    alice, bob = await server.user(tenant_a), await server.user(tenant_b)
    await server.channel(tenant_a, "general", alice)
    await server.channel(tenant_b, "general", bob)
    wa, wb = await server.session(tenant_a, alice), await server.session(tenant_b, bob)
    await publish(wa, "general", "alice's secret")
    await publish(wa, "general", "alice's second")
    await publish(wb, "general", "bob's note")
    store = server.runtime.store
    path = server.settings.data_dir / "baychat.db"

    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT tenant_id, channel_id, id, envelope FROM messages ORDER BY tenant_id, seq"
        ).fetchall()
    by_tenant: dict[str, list[tuple[str, str, str, bytes]]] = {}
    for row in rows:
        by_tenant.setdefault(row[0], []).append(row)
    a_first, a_second = by_tenant[tenant_a.id]
    [b_only] = by_tenant[tenant_b.id]

    cipher = store.cipher
    assert cipher.decrypt(*a_first) == b"alice's secret"
    for tenant_id, channel_id, message_id, _ in (a_second, b_only):
        try:
            cipher.decrypt(tenant_id, channel_id, message_id, a_first[3])
        except DecryptionError:
            continue
        raise AssertionError("a moved ciphertext decrypted")
