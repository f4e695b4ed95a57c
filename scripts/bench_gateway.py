"""The gateway's CPU per published message, in process, without a socket or a store write.

A real ``Runtime`` (embedded SQLite, in-process broker, its worker off) and a real
``ClientSession`` are fed the load generator's publish frames (``persist``: a 200-byte body
and a request id) as fast as the session takes them, writing to a socket that discards the
bytes. Two paths are timed with ``time.process_time``, in chunks:

* publish: the session's per-frame work (the frame budget, decode, the credential
  re-check, the publish budgets, the channel, the broker's ``publish_now``, the waiting
  ack);
* ack: the broker's ``done`` for those messages (fan-out, the ack tracker, each ``ack``
  encoded and queued) and the next loop iteration's socket writes.

The WebSocket frame parsing and the persistence worker are not in these figures (see
docs/BENCHMARKS.md). A user's moving-window publish budget is trimmed to the ~2,000 hits it
holds in ``persist`` at 10,000 msgs/s (here it would hold every frame of the run). Prints
one JSON line: the median and the minimum over the chunks, in µs per message.

    .venv/bin/python scripts/bench_gateway.py --chunks 10
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from server import gcpolicy
from server.auth.authority import scope_for_operator
from server.auth.tokens import new_refresh_token, token_digest
from server.config import Settings
from server.gateway import ClientSession
from server.runtime import Runtime
from server.transport import DirectTransport

WINDOW_HITS = 2000
BUDGETS = ("rate_ws_frames", "rate_publish_connection", "rate_publish_user")


class _NullSocket:
    """The socket side of ``DirectTransport``: takes every write at once."""

    def write_frames(self, data: bytes) -> bool:
        return True

    def buffered(self) -> int:
        return 0

    def close_now(self, code: int, reason: str) -> None:
        return None


async def _token(runtime: Runtime) -> str:
    store = runtime.store
    tenant = await store.tenants.create("bench", "paid")
    scope = scope_for_operator(tenant.id)
    user = await store.users.create(scope, "bench@example.com", "unused", "owner")
    await store.channels.create(scope, "bench", private=False, created_by=user.id)
    session = await store.sessions.create(
        scope,
        user.id,
        token_digest(new_refresh_token(tenant.id)),
        lifetime_ms=3_600_000,
        user_agent="bench",
        ip="127.0.0.1",
    )
    return runtime.auth.access.issue(
        tenant_id=tenant.id, subject=user.id, session_id=session.id, role=user.role
    ).token


async def run(chunk: int, chunks: int, data_dir: Path) -> dict[str, float]:
    settings = Settings.from_env().with_(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'bench.db'}",
        database_owner_url=f"sqlite:///{data_dir / 'bench.db'}",
        keystore_dir=data_dir / "keys",
        embedded_worker=False,
        **dict.fromkeys(BUDGETS, "1000000/second"),
    )
    runtime = await Runtime.start(settings)
    try:
        token = await _token(runtime)
        total = chunk * chunks
        body = "1234567890123 " + "x" * 186
        frames = iter(
            json.dumps({"type": "publish", "channel": "bench", "body": body, "id": i})
            for i in range(total + 1)
        )
        events = getattr(runtime.limiter._shared_storage, "events", {})
        marks: list[float] = []
        seen = 0

        async def receive() -> str | None:
            nonlocal seen
            seen += 1
            if seen == 2:
                await asyncio.sleep(0.05)  # the first publish's task loads the channel
            if seen >= 2 and (seen - 2) % chunk == 0:
                marks.append(time.process_time())
            if seen % 500 == 0:
                for hits in events.values():
                    del hits[WINDOW_HITS:]
            return next(frames, None)

        transport = DirectTransport(_NullSocket(), 1 << 30)
        session = ClientSession(runtime, receive, token, transport)
        gcpolicy.tune()
        await session.run()
        publish = [(b - a) / chunk * 1e6 for a, b in itertools.pairwise(marks)]
        broker = runtime.broker
        entries = await broker.read(total + 1, 0)  # type: ignore[attr-defined]
        ack: list[float] = []
        for start in range(1, len(entries) - chunk + 1, chunk):
            started = time.process_time()
            await broker.done(entries[start : start + chunk])  # type: ignore[attr-defined]
            await asyncio.sleep(0)  # the socket writes
            ack.append((time.process_time() - started) / chunk * 1e6)
        await session.teardown()
    finally:
        await runtime.stop()
    return {
        "publish_us_median": round(statistics.median(publish), 2),
        "publish_us_min": round(min(publish), 2),
        "ack_us_median": round(statistics.median(ack), 2),
        "ack_us_min": round(min(ack), 2),
        "total_us_median": round(statistics.median(publish) + statistics.median(ack), 2),
        "messages": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=5000, help="messages per timed chunk")
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = uvloop.run(run(args.chunk, args.chunks, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
