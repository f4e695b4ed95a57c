"""Logs: JSON lines with request/connection and tenant ids, the redaction safety net, and a
canary run of a real ``baychat serve`` whose every log line is searched for secrets."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from server.logs import ContextFilter, RedactingJsonFormatter, StripQueryStrings, bind, redact
from tests.process import serve_process

ORIGIN = "https://app.canary.test"
PASSWORD = "Canary-Password-5c1e0d7a"
WRONG_PASSWORD = "Canary-Wrong-Password-92b4"
BODY = "cb-5eed"  # short: wire traces truncate long frames in the middle
COOKIE = "canary-cookie-value-77aa"
# A made-up agent token (refused before any lookup); a real one is minted in the scenario.
AGENT_TOKEN = "bay_canary0agent0token0f00dfeed"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9"),
        ("token eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "eyJzdWIiOiJ4In0"),
        ("refresh rt1.tenant-id.AAAAbbbbCCCCddddEEEEffff0000111122223333", "AAAAbbbb"),
        ("agent bay_0123456789abcdefABCDEF", "0123456789abcdef"),
        ("postgresql://app:s3cret-pw@db:5432/baychat", "s3cret-pw"),
        ("redis://:hunter2@cache:6379/0", "hunter2"),
        ('{"password": "pa55word"}', "pa55word"),
        ("GET /x?access_token=abc123secret&limit=5", "abc123secret"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("cookie=sessionvalue42", "sessionvalue42"),
    ],
)
def test_redaction_catches_secrets_that_slip_through(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_redaction_leaves_ordinary_text_alone() -> None:
    text = 'login failed: invalid tenant, email or password {"code": "token_expired"}'
    assert redact(text) == text


def _record(message: str, *args: object, name: str = "baychat.test") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)


def test_lines_are_json_with_the_bound_ids_and_no_secret() -> None:
    formatter = RedactingJsonFormatter("%(levelname)s %(name)s %(message)s")
    bind(request_id="req-1", conn_id="conn-1", tenant_id="tenant-1")
    try:
        record = _record("user logged in with %s", "Bearer eyJhbGciOi.eyJzdWIi.sig")
        ContextFilter().filter(record)
        line = json.loads(formatter.format(record))
    finally:
        bind(request_id=None, conn_id=None, tenant_id=None)
    assert line["request_id"] == "req-1"
    assert line["conn_id"] == "conn-1"
    assert line["tenant_id"] == "tenant-1"
    assert "eyJ" not in line["message"]


def test_uvicorn_paths_lose_their_query_strings() -> None:
    record = _record('%s - "WebSocket %s" [accepted]', "1.2.3.4:5", "/ws?token=abc")
    StripQueryStrings().filter(record)
    assert record.getMessage() == '1.2.3.4:5 - "WebSocket /ws" [accepted]'


# -- the canary ------------------------------------------------------------------------------


def _secrets_on_disk(data_dir: Path) -> list[str]:
    """The key material the server generated: none of it may reach a log."""
    found = []
    for path in (data_dir / "secrets").glob("*.json"):
        doc: Any = json.loads(path.read_text())
        keys = doc.get("keys", doc)
        values = keys.values() if isinstance(keys, dict) else []
        found += [v for v in values if isinstance(v, str) and len(v) >= 16]
    return found


def test_canary_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    with serve_process(
        tmp_path, allowed_origins=ORIGIN, log_level="debug", rate_login_account_ip="100/minute"
    ) as server:
        tenant = server.cli("tenant", "create", "canary")
        server.cli(
            "user",
            "create",
            "canary",
            "ada@example.com",
            "--role",
            "owner",
            "--password-stdin",
            stdin=PASSWORD,
        )
        canaries = [PASSWORD, WRONG_PASSWORD, BODY, COOKIE, AGENT_TOKEN]
        with httpx.Client(base_url=server.http_url, timeout=10) as http:
            login = {"tenant": "canary", "email": "ada@example.com"}
            assert http.post("/api/v1/auth/login", json={**login, "password": WRONG_PASSWORD})
            tokens = http.post("/api/v1/auth/login", json={**login, "password": PASSWORD}).json()
            access, refresh = tokens["access_token"], tokens["refresh_token"]
            auth = {"Authorization": f"Bearer {access}"}
            assert http.post("/api/v1/channels", json={"name": "general"}, headers=auth)
            http.get("/api/v1/channels", headers={**auth, "Cookie": f"session={COOKIE}"})
            http.get(f"/api/v1/channels/general/messages?token={access}", headers=auth)
            http.get("/api/v1/channels", headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
            renewed = http.post("/api/v1/auth/refresh", json={"refresh_token": refresh}).json()
            canaries += [access, refresh, renewed["access_token"], renewed["refresh_token"]]
            agent = http.post("/api/v1/agents", json={"name": "canary-bot"}, headers=auth).json()
            issued = http.post(
                f"/api/v1/agents/{agent['id']}/tokens",
                json={"scopes": [{"channel": "general", "actions": ["read", "write"]}]},
                headers=auth,
            ).json()
            bot_token = issued["token"]
            assert bot_token.startswith("bay_")
            canaries.append(bot_token)
            bot_auth = {"Authorization": f"Bearer {bot_token}"}
            assert http.get("/api/v1/channels", headers=bot_auth).status_code == 200
            posted = http.post(
                "/api/v1/channels/general/messages", json={"body": BODY}, headers=bot_auth
            )
            assert posted.status_code == 201

        with connect(server.ws_url, additional_headers=bot_auth) as bot:
            assert json.loads(bot.recv(5))["type"] == "ready"
            bot.send(json.dumps({"type": "subscribe", "channel": "general", "id": 1}))
            assert json.loads(bot.recv(5))["type"] == "subscribed"

        with connect(f"{server.ws_url}?token={access}", additional_headers=auth) as ws:
            assert json.loads(ws.recv(5))["type"] == "ready"
            ws.send(json.dumps({"type": "subscribe", "channel": "general", "id": 1}))
            ws.send(json.dumps({"type": "publish", "channel": "general", "body": BODY, "id": 2}))
            ws.send(json.dumps({"type": "refresh", "token": renewed["access_token"], "id": 3}))
            ws.send(json.dumps({"type": "auth", "token": access, "id": 4}))
            seen = {json.loads(ws.recv(5)).get("id") for _ in range(5)}
            assert {1, 2, 3, 4} <= seen
        with connect(server.ws_url, origin=ORIGIN) as browser:  # type: ignore[arg-type]
            browser.send(json.dumps({"type": "auth", "token": access}))
            assert json.loads(browser.recv(5))["type"] == "ready"
        secrets_on_disk = _secrets_on_disk(server.data_dir)
        server.stop()
        logs = server.logs()

    assert secrets_on_disk, "expected generated key material to compare against"
    for canary in canaries + secrets_on_disk:
        assert canary not in logs, f"a secret reached the logs: {canary[:12]}..."
    for canary in canaries:
        encoded = base64.b64encode(canary.encode()).decode()
        assert encoded not in logs

    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]
    events = {line.get("event") for line in lines}
    assert {
        "auth.login",
        "auth.login_failed",
        "http.request",
        "ws.connect",
        "ws.close",
        "auth.ws",
    } <= events
    assert all("request_id" in line for line in lines if line.get("event") == "http.request")
    assert any(line.get("tenant_id") == tenant["id"] for line in lines)
    assert any("conn_id" in line for line in lines)
