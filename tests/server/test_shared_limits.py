"""Two real gateway processes on one Redis share their rate-limit counters; two on memory
storage do not (the control that shows the first result is the Redis storage's doing)."""

from __future__ import annotations

import itertools
import json
import secrets
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from protocol.codes import CloseCode
from tests.backends import shared_redis_url
from tests.process import ServeProcess, serve_process

LIMITS = {"rate_login_account_ip": "4/minute", "rate_ws_connect": "3/minute"}


def _login_statuses(gateways: list[ServeProcess], attempts: int) -> list[int]:
    statuses = []
    for _, gateway in zip(range(attempts), itertools.cycle(gateways), strict=False):
        answer = httpx.post(
            f"{gateway.http_url}/api/v1/auth/login",
            json={"tenant": "shared", "email": "mallory@example.com", "password": "guess"},
            timeout=10,
        )
        statuses.append(answer.status_code)
    return statuses


def _connect_outcome(gateway: ServeProcess) -> str:
    """'accepted' (then closed for its bad token) or the error code of the first frame."""
    with connect(gateway.ws_url, additional_headers={"Authorization": "Bearer not-a-token"}) as ws:
        try:
            frame = json.loads(ws.recv(5))
        except ConnectionClosed:
            assert ws.close_code == int(CloseCode.UNAUTHORIZED)
            return "accepted"
        with pytest.raises(ConnectionClosed):
            ws.recv(5)
        assert ws.close_code == int(CloseCode.RATE_LIMITED)
        code: str = frame["code"]
        return code


async def test_gateways_on_one_redis_share_rate_limits(tmp_path: Path) -> None:
    settings = {
        "rate_limit_url": await shared_redis_url(),
        "rate_limit_prefix": f"test-{secrets.token_hex(6)}",  # apart from other runs
        **LIMITS,
    }
    with (
        serve_process(tmp_path / "a", **settings) as a,
        serve_process(tmp_path / "b", **settings) as b,
    ):
        logins = _login_statuses([a, b], 6)
        connects = [_connect_outcome(g) for g in (a, b, a, b)]
    # 4 attempts per minute for this account and address, counted across both gateways
    assert logins == [401, 401, 401, 401, 429, 429]
    assert connects == ["accepted", "accepted", "accepted", "rate_limited"]


async def test_gateways_on_memory_storage_count_apart(tmp_path: Path) -> None:
    with (
        serve_process(tmp_path / "a", **LIMITS) as a,
        serve_process(tmp_path / "b", **LIMITS) as b,
    ):
        logins = _login_statuses([a, b], 6)
    assert logins == [401] * 6  # 3 per gateway: neither reached its own 4
