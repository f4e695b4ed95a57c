"""The backend fixtures themselves: a fresh Postgres database has an owner and a powerless
application role; a private Redis answers."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from tests.backends import fresh_postgres, own_redis


async def test_fresh_postgres_has_owner_and_powerless_app_role() -> None:
    async with fresh_postgres() as db:
        owner = await asyncpg.connect(db.owner_url)
        try:
            assert await owner.fetchval("SELECT current_user") == db.owner_role
        finally:
            await owner.close()
        app = await asyncpg.connect(db.app_url)
        try:
            flags = await app.fetchrow(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            )
            assert flags is not None
            assert (flags["rolsuper"], flags["rolbypassrls"]) == (False, False)
        finally:
            await app.close()


async def test_own_redis_answers() -> None:
    with own_redis() as server:
        client = aioredis.from_url(server.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
