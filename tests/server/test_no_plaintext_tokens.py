"""No plaintext credential at rest or in logs: refresh tokens, agent (bay_) tokens and
access tokens (JWTs) never reach the database files or any log record, whatever happens to
them (issued, used, rotated, replayed, mistyped, revoked)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from protocol.codes import CloseCode
from tests.backends import POSTGRES_ADMIN_URL, on_every_store
from tests.harness import LiveServer, assert_closed, expect, send, subscribe
from tests.identity import admin, agent_token, bearer

pytestmark = on_every_store


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at DEBUG, the server's access log included (uvicorn does not let it
    propagate, so the capture handler is attached to it directly). At DEBUG, uvicorn logs
    each WebSocket frame it receives: the auth frames' tokens must be masked."""
    caplog.set_level(logging.DEBUG)
    attached = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [logger.level for logger in attached]
    for logger in attached:
        logger.addHandler(caplog.handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        for logger, level in zip(attached, levels, strict=True):
            logger.removeHandler(caplog.handler)
            logger.setLevel(level)


def _secrets_of(token: str) -> list[str]:
    """The token, and the part of it that is secret on its own."""
    if token.startswith("bay_"):
        return [token, token[4:36]]
    if token.startswith("rt1."):
        return [token, token.rsplit(".", 1)[1]]
    return [token, token.rsplit(".", 1)[1]]  # a JWT and its signature


# The test's own clients (not the server) log what they send at DEBUG.
CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        if record.name.startswith(CLIENT_LOGGERS):
            continue
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def _data_files(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


async def _postgres_rows(database_url: str) -> bytes:
    """Every row of every table, read as the superuser (row-level security does not hide
    anything from it)."""
    import asyncpg

    name = urlsplit(database_url).path.lstrip("/")
    admin_db = await asyncpg.connect(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    try:
        tables = await admin_db.fetch(
            "SELECT quote_ident(table_name) AS t FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        dumped = [
            str(await admin_db.fetch(f"SELECT x::text FROM {row['t']} x"))  # noqa: S608
            for row in tables
        ]
    finally:
        await admin_db.close()
    return "\n".join(dumped).encode()


async def test_tokens_never_reach_the_database_or_the_logs(
    server: LiveServer, all_logs: pytest.LogCaptureFixture
) -> None:
    tenant = await server.tenant(plan="paid")
    boss = await admin(server, tenant)
    await server.channel(tenant, "general", boss.user)
    seen: list[str] = [boss.tokens["access_token"], boss.tokens["refresh_token"]]
    async with server.http() as http:
        rotated = (
            await http.post(
                "/api/v1/auth/refresh", json={"refresh_token": boss.tokens["refresh_token"]}
            )
        ).json()
        seen += [rotated["access_token"], rotated["refresh_token"]]
        issued = await agent_token(
            server, boss, scopes=[{"channel": "general", "actions": ["read", "write"]}]
        )
        seen.append(issued.token)
        await http.post(
            "/api/v1/channels/general/messages", json={"body": "hi"}, headers=bearer(issued.token)
        )
        mistyped = issued.token[:-1] + ("x" if issued.token[-1] != "x" else "y")
        await http.get("/api/v1/channels", headers=bearer(mistyped))
        ws = await server.connect()
        await send(ws, {"type": "auth", "token": issued.token})
        await expect(ws, "ready")
        await subscribe(ws, "general")
        human = await server.connect(rotated["access_token"])
        await send(human, {"type": "refresh", "token": rotated["access_token"]})
        await expect(human, "refreshed", skip=("expiring",))
        await http.delete(
            f"/api/v1/agents/{issued.agent_id}/tokens/{issued.token_id}", headers=boss.headers
        )
        await assert_closed(ws, CloseCode.REVOKED)
        await http.get("/api/v1/channels", headers=bearer(issued.token))
        # A replayed refresh token: the session dies, with a warning in the log.
        await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": boss.tokens["refresh_token"]}
        )
        await http.get("/api/v1/audit/export", headers=bearer(rotated["access_token"]))
    await assert_closed(human, CloseCode.REVOKED)
    await server.stop()  # flush everything to the files

    stored = _data_files(server.settings.data_dir)
    if server.settings.database_url.startswith("postgres"):
        stored += await _postgres_rows(server.settings.database_url)
    assert issued.token_id.encode() in stored  # the scan did see this test's rows
    logs = _log_text(all_logs)
    assert "refresh token reused" in logs  # the capture did see the server's logs
    for token in seen:
        for secret in _secrets_of(token):
            assert secret.encode() not in stored, f"{secret[:8]}... found in the data files"
            assert secret not in logs, f"{secret[:8]}... found in the logs"
