"""How many encrypted messages per second the persistence worker stores with a backlog.

A log already holding ``--messages`` entries (spread over ``--tenants`` tenants, one channel
each, 200-byte bodies, interleaved the way a shared log is) is drained by the real
``PersistenceWorker`` into the real store: per batch, AES-256-GCM under each tenant's derived
key, one transaction with the tenant set per group (row-level security on Postgres), then
``done``. No gateway, no network but the database's. Prints one JSON line: stored msgs/s,
CPU seconds of this process per message, batch count, and a check that every message is in
the store exactly once.

    .venv/bin/python scripts/bench_store.py \\
        --database-url postgresql://app@127.0.0.1/db --owner-url postgresql://owner@127.0.0.1/db

The database must be empty or hold only earlier runs of this script (each run makes its own
tenants). ``--database-url sqlite:////tmp/x.db`` measures the embedded store the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from server.auth.authority import scope_for_operator, scope_for_system
from storage.engine import database_user
from storage.ids import new_message_id, now_ms
from storage.keys import MasterKeyring, TenantKeyStore
from storage.models import Message
from storage.store import Store
from storage.worker import LogEntry, PersistenceWorker


class BacklogLog:
    """A persistence log that already holds everything: ``read`` hands out the next batch."""

    def __init__(self, entries: list[LogEntry]) -> None:
        self._entries = entries
        self._next = 0
        self.batches = 0

    async def read(self, max_count: int, block_ms: int) -> list[LogEntry]:
        batch = self._entries[self._next : self._next + max_count]
        self._next += len(batch)
        return batch

    async def done(self, entries: Sequence[LogEntry]) -> None:
        self.batches += 1

    def backlog(self) -> int:
        return len(self._entries) - self._next


async def run(args: argparse.Namespace) -> dict[str, object]:
    keyring = MasterKeyring({1: secrets.token_bytes(32)}, 1)
    keystore = TenantKeyStore(Path(tempfile.mkdtemp(prefix="bench-store-keys-")))
    owner = Store.from_url(args.owner_url or args.database_url, keyring, keystore)
    await owner.open(migrate_schema=True, app_role=database_user(args.database_url))
    await owner.close()
    store = Store.from_url(args.database_url, keyring, keystore)
    await store.open()
    try:
        channels = []
        for _ in range(args.tenants):
            tenant = await store.tenants.create(f"bench-{secrets.token_hex(4)}")
            scope = scope_for_operator(tenant.id)
            user = await store.users.create(scope, "bench@example.com", "x", "owner")
            channel = await store.channels.create(scope, "bench", private=False, created_by=user.id)
            channels.append((tenant.id, channel.id, user.id))
        body = "x" * args.size
        entries = []
        for i in range(args.messages):
            tenant_id, channel_id, user_id = channels[i % len(channels)]
            message = Message(
                tenant_id,
                channel_id,
                "bench",
                i // len(channels) + 1,
                new_message_id(),
                user_id,
                body,
                now_ms(),
            )
            entries.append(LogEntry(message.id, message, "bench"))
        backends = await _backends(store)
        log = BacklogLog(entries)
        worker = PersistenceWorker(log, store, scope_for_system, max_batch=args.batch)
        worker.stop()  # run() returns once the log is empty
        db_cpu_before = _cpu_seconds(backends)
        cpu, wall = time.process_time(), time.perf_counter()
        await worker.run()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        # The pool may have opened connections during the run (one per write lane): their
        # whole CPU time counts, the older ones' from the start.
        after = await _backends(store)
        db_cpu = sum(_cpu_seconds(after).values()) - sum(
            seconds for pid, seconds in db_cpu_before.items() if pid in after
        )
        stored = 0
        for tenant_id, channel_id, _ in channels:
            async with store.engine.transaction("bench_count", tenant_id=tenant_id) as tx:
                stored += await tx.fetchval(
                    "SELECT count(DISTINCT seq) FROM messages WHERE channel_id = $1", channel_id
                )
    finally:
        await store.close()
    return {
        "store": args.database_url.split(":", 1)[0],
        "messages": args.messages,
        "tenants": args.tenants,
        "batch": args.batch,
        "batches": log.batches,
        "stored_msgs_per_s": round(args.messages / wall),
        "wall_s": round(wall, 3),
        "cpu_us_per_message": round(cpu / args.messages * 1e6, 1),
        "database_cpu_us_per_message": round(db_cpu / args.messages * 1e6, 1) if backends else None,
        "all_stored": stored == args.messages,
        "host_load_average": os.getloadavg()[0],
    }


async def _backends(store: Store) -> list[int]:
    """This process's Postgres backends when the database runs on this host (else [])."""
    if store.engine.dialect != "postgres":
        return []
    async with store.engine.transaction("bench_backends") as tx:
        rows = await tx.fetch(
            "SELECT pid FROM pg_stat_activity WHERE usename = current_user"
            " AND application_name = 'baychat'"
        )
    pids = [int(row["pid"]) for row in rows]
    return pids if all(_is_local(pid) for pid in pids) else []


def _is_local(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").exists()


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each local process, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--owner-url", help="role that migrates (default: --database-url)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000, help="the worker's max batch")
    parser.add_argument("--size", type=int, default=200, help="body bytes")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (default: uvloop, the one `baychat worker` and `baychat serve` run)",
    )
    args = parser.parse_args()
    runner = uvloop.run if args.loop == "uvloop" else asyncio.run
    result = runner(run(args))
    print(json.dumps({**result, "loop": args.loop}))


if __name__ == "__main__":
    main()
