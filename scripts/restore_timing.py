"""How long a restore takes: fill a database with N encrypted messages, back it up, restore
it into an empty database and verify it (every message decrypted), and print the timings.

    .venv/bin/python scripts/restore_timing.py --messages 100000
    .venv/bin/python scripts/restore_timing.py --messages 100000 \\
        --postgres postgresql://postgres@127.0.0.1:5432/postgres

Not a test: a measurement for docs/OPERATIONS.md (RTO). With --postgres it creates two
scratch databases and roles (bc_timing_*) through that superuser URL and drops them after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from server.auth.authority import scope_for_operator, scope_for_system
from storage.backup import take_backup
from storage.crypto import MessageCipher
from storage.engine import open_engine
from storage.ids import new_message_id, now_ms
from storage.keys import MasterKeyring, TenantKeyStore
from storage.models import Message
from storage.restore import load_backup, verify
from storage.snapshot import snapshotter_for
from storage.store import Store

BODY = "x" * 120  # a typical chat line


@contextlib.asynccontextmanager
async def postgres_database(admin_url: str) -> AsyncIterator[tuple[str, str]]:
    """A scratch database owned by a scratch role: (owner URL, role name)."""
    import asyncpg

    admin = await asyncpg.connect(admin_url)
    tag = secrets.token_hex(4)
    name, role, password = f"bc_timing_{tag}", f"bc_timing_{tag}_owner", secrets.token_hex(12)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {name} OWNER {role}")
        host = admin_url.split("@", 1)[1].split("/", 1)[0]
        yield f"postgresql://{role}:{password}@{host}/{name}", role
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def fill(store: Store, messages: int, tenants: int, channels: int) -> None:
    per_channel = messages // (tenants * channels)
    for t in range(tenants):
        tenant = await store.tenants.create(f"timing-{t}")
        for c in range(channels):
            channel = await store.channels.create(
                scope_for_operator(tenant.id), f"c{c}", private=False, created_by="timing"
            )
            batch = [
                (
                    scope_for_system(tenant.id),
                    Message(
                        tenant.id,
                        channel.id,
                        channel.name,
                        seq,
                        new_message_id(),
                        "u",
                        BODY,
                        now_ms(),
                    ),
                )
                for seq in range(1, per_channel + 1)
            ]
            for i in range(0, len(batch), 5000):
                await store.messages.insert_batch(batch[i : i + 5000])


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    keyring = MasterKeyring({1: secrets.token_bytes(32)}, 1)
    keystore = TenantKeyStore(work / "keys")
    key = os.urandom(32)
    role: str | None = None
    target_role: str | None = None
    async with contextlib.AsyncExitStack() as stack:
        if args.postgres:
            source_url, role = await stack.enter_async_context(postgres_database(args.postgres))
            target_url, target_role = await stack.enter_async_context(
                postgres_database(args.postgres)
            )
            backup_url = args.postgres.rsplit("/", 1)[0] + "/" + source_url.rsplit("/", 1)[1]
        else:
            source_url = f"sqlite:///{work / 'source.db'}"
            target_url = f"sqlite:///{work / 'target.db'}"
            backup_url = source_url
        store = Store.from_url(source_url, keyring, keystore)
        await store.open(migrate_schema=True, app_role=role)
        started = time.monotonic()
        await fill(store, args.messages, args.tenants, args.channels)
        filled = time.monotonic() - started
        await store.close()

        started = time.monotonic()
        source = snapshotter_for(source_url, source_url=backup_url)
        backup = await take_backup(source, work / "backups", key)
        backed_up = time.monotonic() - started

        target = snapshotter_for(target_url, app_role=target_role)
        engine = open_engine(target_url)
        started = time.monotonic()
        manifest = await load_backup(backup, key, target, engine.dialect)
        loaded = time.monotonic() - started
        await engine.open()
        try:
            started = time.monotonic()
            cipher = MessageCipher(keyring, keystore)
            result = await verify(engine, cipher, manifest.facts, scope_for_operator)
            verified = time.monotonic() - started
        finally:
            await engine.close()
    assert result.ok, result.problems
    return {
        "engine": "postgres" if args.postgres else "sqlite",
        "messages": manifest.facts.row_counts["messages"],
        "backup_bytes": backup.stat().st_size,
        "fill_s": round(filled, 2),
        "backup_s": round(backed_up, 2),
        "restore_load_s": round(loaded, 2),
        "restore_verify_s": round(verified, 2),
        "restore_total_s": round(loaded + verified, 2),
        "messages_decrypted": result.messages_decrypted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--channels", type=int, default=10, help="per tenant")
    parser.add_argument("--postgres", default=None, help="superuser URL; default: SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baychat-timing-") as work:
        print(json.dumps(asyncio.run(measure(args, Path(work))), indent=2))


if __name__ == "__main__":
    main()
