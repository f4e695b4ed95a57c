"""Rate limits, each tried until it bites: login (soft lockout), refresh, HTTP writes,
WebSocket connects, publishes per connection and per user, flooding; X-Forwarded-For only
from a trusted proxy; authentication limits fail closed when their storage is down.

The module's server trusts 127.0.0.1 as its proxy, so each test speaks from its own
addresses (``X-Forwarded-For``) and its own accounts and never shares a counter with another.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from limits.storage import MemoryStorage
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection

from protocol.codes import CloseCode
from protocol.errors import RateLimitedError, UnavailableError
from server.ratelimit import POLICIES, RateLimiter
from storage.models import Tenant, User
from tests.backends import own_redis
from tests.harness import (
    PASSWORD,
    LiveServer,
    assert_closed,
    expect,
    live_server,
    make_settings,
    recv,
    send,
)
from tests.server.broker.rig import drop_namespace, redis_url

pytestmark = pytest.mark.asyncio(loop_scope="module")
_ips = (f"203.0.113.{i}" for i in itertools.count(1))

LIMITS = {
    "rate_login_ip": "5/minute",
    "rate_login_account_ip": "3/minute",
    "rate_login_account": "6/minute",
    "rate_refresh": "2/minute",
    "rate_http_write": "3/minute",
    "rate_ws_connect": "2/minute",
    "rate_publish_connection": "3/minute",
    "rate_publish_user": "5/minute",
    "rate_flood_strikes": 3,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("limited"), trusted_proxies=("127.0.0.1",), **LIMITS
    )
    async with live_server(settings) as live:
        yield live


def ip() -> str:
    return next(_ips)


async def token_for(server: LiveServer, user: User) -> str:
    """An access token without a login (logins are rate-limited here)."""
    return await server.access_token(user)


async def login(
    server: LiveServer, tenant: Tenant, email: str, password: str, source: str
) -> httpx.Response:
    async with server.http() as http:
        return await http.post(
            "/api/v1/auth/login",
            json={"tenant": tenant.slug, "email": email, "password": password},
            headers={"X-Forwarded-For": source},
        )


def assert_429(answer: httpx.Response, window_s: int = 60) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(answer.headers["retry-after"]) <= window_s


async def test_login_soft_lockout_stops_one_address_without_locking_the_victim_out(
    limited: LiveServer,
) -> None:
    tenant = await limited.tenant()
    victim = await limited.user(tenant)
    attacker, home = ip(), ip()

    for _ in range(3):
        assert (await login(limited, tenant, victim.email, "wrong", attacker)).status_code == 401
    for _ in range(5):  # the attacker keeps trying: refused before any password check
        assert_429(await login(limited, tenant, victim.email, "wrong", attacker))

    # The account-wide budget (6) was only dented by the attacker's 3: the victim gets in.
    assert (await login(limited, tenant, victim.email, PASSWORD, home)).status_code == 200
    assert (await login(limited, tenant, victim.email, PASSWORD, home)).status_code == 200


async def test_many_addresses_hit_the_account_limit_for_one_short_window(
    limited: LiveServer,
) -> None:
    tenant = await limited.tenant()
    victim = await limited.user(tenant)
    for _ in range(6):
        assert (await login(limited, tenant, victim.email, "wrong", ip())).status_code == 401
    # Now the account itself is throttled, for at most its one-minute window.
    assert_429(await login(limited, tenant, victim.email, PASSWORD, ip()))


async def test_unknown_accounts_are_limited_exactly_like_real_ones(limited: LiveServer) -> None:
    tenant = await limited.tenant()
    source = ip()
    answers = [
        (await login(limited, tenant, "nobody@example.com", "wrong", source)).status_code
        for _ in range(4)
    ]
    assert answers == [401, 401, 401, 429]


async def test_login_is_limited_per_address_across_accounts(limited: LiveServer) -> None:
    tenant = await limited.tenant()
    source = ip()
    answers = [
        (await login(limited, tenant, f"spray{i}@example.com", "wrong", source)).status_code
        for i in range(6)
    ]
    assert answers == [401] * 5 + [429]


async def test_x_forwarded_for_is_ignored_from_untrusted_peers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_login_ip="2/minute")
    async with live_server(settings) as server:
        tenant = await server.tenant()
        answers = [
            (await login(server, tenant, f"u{i}@example.com", "x", ip())).status_code
            for i in range(3)
        ]
    # every request came from 127.0.0.1, whatever X-Forwarded-For claimed
    assert answers == [401, 401, 429]


async def test_refresh_is_limited_per_address(limited: LiveServer) -> None:
    source = ip()
    statuses = []
    async with limited.http() as http:
        for _ in range(3):
            answer = await http.post(
                "/api/v1/auth/refresh",
                json={"refresh_token": "rt1.t." + "x" * 43},
                headers={"X-Forwarded-For": source},
            )
            statuses.append(answer.status_code)
        assert_429(answer)
    assert statuses == [401, 401, 429]


async def test_http_writes_are_limited_per_principal(limited: LiveServer) -> None:
    tenant = await limited.tenant()
    alice, bob = await limited.user(tenant), await limited.user(tenant)
    as_alice = {"Authorization": f"Bearer {await token_for(limited, alice)}"}
    as_bob = {"Authorization": f"Bearer {await token_for(limited, bob)}"}
    async with limited.http() as http:
        created = [
            (await http.post("/api/v1/channels", json={"name": f"c{i}"}, headers=as_alice))
            for i in range(4)
        ]
        reading = await http.get("/api/v1/channels", headers=as_alice)
        other_user = await http.post("/api/v1/channels", json={"name": "b"}, headers=as_bob)
    assert [c.status_code for c in created[:3]] == [201, 201, 201]
    assert_429(created[3])
    assert reading.status_code == 200  # reads are not writes
    assert other_user.status_code == 201


async def _ws(server: LiveServer, source: str, token: str | None = None) -> ClientConnection:
    ws = await server.connect(additional_headers={"X-Forwarded-For": source})
    if token is not None:
        await send(ws, {"type": "auth", "token": token})
        await expect(ws, "ready")
    return ws


async def test_websocket_connects_are_limited_per_address(limited: LiveServer) -> None:
    tenant = await limited.tenant()
    user = await limited.user(tenant)
    source = ip()
    for _ in range(2):
        await _ws(limited, source, await token_for(limited, user))
    third = await _ws(limited, source)
    error = await expect(third, "error")
    assert error["code"] == "rate_limited"
    assert 1 <= error["retry_after"] <= 60
    await assert_closed(third, CloseCode.RATE_LIMITED)
    await _ws(limited, ip(), await token_for(limited, user))  # another address is unaffected


async def _next_reply(ws: ClientConnection, request_id: str) -> dict[str, Any]:
    """The reply to request ``request_id`` (ack or error), passing over everything else."""
    while True:
        frame = await recv(ws)
        if frame.get("id") == request_id:
            return frame


async def _publish(ws: ClientConnection, channel: str, request_id: str) -> dict[str, Any]:
    await send(ws, {"type": "publish", "channel": channel, "body": "hi", "id": request_id})
    return await _next_reply(ws, request_id)


async def test_publishes_are_limited_per_connection(limited: LiveServer) -> None:
    tenant = await limited.tenant()
    user = await limited.user(tenant)
    await limited.channel(tenant, "general", user)
    ws = await _ws(limited, ip(), await token_for(limited, user))
    replies = [await _publish(ws, "general", f"p{i}") for i in range(4)]
    assert [r["type"] for r in replies] == ["ack", "ack", "ack", "error"]
    assert replies[3]["code"] == "rate_limited"
    assert 1 <= replies[3]["retry_after"] <= 60
    await send(ws, {"type": "ping", "id": "still-open"})
    assert (await _next_reply(ws, "still-open"))["type"] == "pong"


async def test_publishes_are_limited_per_user_across_connections(limited: LiveServer) -> None:
    tenant = await limited.tenant()
    user = await limited.user(tenant)
    await limited.channel(tenant, "general", user)
    first = await _ws(limited, ip(), await token_for(limited, user))
    second = await _ws(limited, ip(), await token_for(limited, user))
    replies = [await _publish(first, "general", f"a{i}") for i in range(3)]
    replies += [await _publish(second, "general", f"b{i}") for i in range(3)]
    assert [r["type"] for r in replies] == ["ack"] * 5 + ["error"]
    assert replies[-1]["code"] == "rate_limited"


async def test_a_connection_that_keeps_flooding_is_closed(limited: LiveServer) -> None:
    tenant = await limited.tenant()
    user = await limited.user(tenant)
    await limited.channel(tenant, "general", user)
    ws = await _ws(limited, ip(), await token_for(limited, user))
    for i in range(3 + 3):  # 3 allowed, then 3 strikes
        await send(ws, {"type": "publish", "channel": "general", "body": "x", "id": i})
    await assert_closed(ws, CloseCode.RATE_LIMITED)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def limited_on_redis(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """The same limits with the Redis broker, whose Redis holds the shared counters: the
    per-user publish budget is hit inside the broker's publish script."""
    url = await redis_url()
    settings = make_settings(
        tmp_path_factory.mktemp("limited-redis"),
        trusted_proxies=("127.0.0.1",),
        broker_url=url,
        rate_limit_prefix=f"test-{secrets.token_hex(6)}",  # counters apart from other runs
        **LIMITS,
    )
    try:
        async with live_server(settings) as live:
            assert live.runtime.limiter.deferred("publish_user", "t", "user", "u") is not None
            yield live
    finally:
        await drop_namespace(url)


async def _replies(ws: ClientConnection, request_ids: list[str]) -> list[dict[str, Any]]:
    """The replies to ``request_ids``, in that order, whatever order they came in (an
    error comes at once, an ack when the message is stored)."""
    got: dict[str, dict[str, Any]] = {}
    while len(got) < len(request_ids):
        frame = await recv(ws)
        if frame.get("id") in request_ids:
            got[frame["id"]] = frame
    return [got[i] for i in request_ids]


async def test_publishes_sent_back_to_back_are_limited_per_user_in_the_publish_script(
    limited_on_redis: LiveServer,
) -> None:
    server = limited_on_redis
    tenant = await server.tenant()
    user = await server.user(tenant)
    await server.channel(tenant, "general", user)
    replies = []
    for name in ("a", "b"):
        ws = await _ws(server, ip(), await token_for(server, user))
        ids = [f"{name}{i}" for i in range(3)]
        for request_id in ids:  # none waits for the one before
            frame = {"type": "publish", "channel": "general", "body": "hi", "id": request_id}
            await send(ws, frame)
        replies += await _replies(ws, ids)
    assert [r["type"] for r in replies] == ["ack"] * 5 + ["error"]
    assert [r["seq"] for r in replies[:5]] == [1, 2, 3, 4, 5]  # in the order sent
    assert replies[-1]["code"] == "rate_limited"
    assert 1 <= replies[-1]["retry_after"] <= 60
    await send(ws, {"type": "ping", "id": "still-open"})
    assert (await _next_reply(ws, "still-open"))["type"] == "pong"


async def test_the_user_budget_lies_in_the_tenants_redis_cluster_slot(
    limited_on_redis: LiveServer,
) -> None:
    """The publish script spends the budget beside the tenant's seq, window and log, and a
    Redis Cluster runs a script only on keys of one slot: the budget's key carries the
    tenant's hash tag, and so do the counters the HTTP path keeps for the same principal."""
    server = limited_on_redis
    tenant = await server.tenant()
    user = await server.user(tenant)
    await server.channel(tenant, "general", user)
    token = await token_for(server, user)
    assert (await _publish(await _ws(server, ip(), token), "general", "ws"))["type"] == "ack"
    async with server.http() as http:
        response = await http.post(
            "/api/v1/channels/general/messages",
            json={"body": "over HTTP"},
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": ip()},
        )
    assert response.status_code == 201, response.text
    broker_url = server.settings.broker_url
    namespace = broker_url.split("namespace=")[1].split("&")[0]
    client = aioredis.Redis.from_url(broker_url.split("?")[0])
    try:
        pattern = f"{server.settings.rate_limit_prefix}:rl:*{user.id}*"
        keys = [key async for key in client.scan_iter(match=pattern)]
        tenant_keys = [key async for key in client.scan_iter(match=f"{namespace}:*{tenant.id}*")]
    finally:
        await client.aclose()
    assert sorted(key.decode().split("/")[1] for key in keys) == ["http_write", "publish_user"]
    assert len(tenant_keys) >= 3  # the channel's seq and window, the tenant's log
    assert {key_slot(key) for key in keys + tenant_keys} == {key_slot(tenant_keys[0])}


async def test_a_connection_flooding_past_the_user_budget_is_closed_on_redis(
    limited_on_redis: LiveServer,
) -> None:
    server = limited_on_redis
    tenant = await server.tenant()
    user = await server.user(tenant)
    await server.channel(tenant, "general", user)
    spender = await _ws(server, ip(), await token_for(server, user))
    for i in range(3):
        await _publish(spender, "general", f"s{i}")
    flooder = await _ws(server, ip(), await token_for(server, user))
    # 2 left of the user's 5, then 3 strikes, all refused by the publish script.
    for i in range(2 + 3):
        await send(flooder, {"type": "publish", "channel": "general", "body": "x", "id": i})
    await assert_closed(flooder, CloseCode.RATE_LIMITED)


# -- the limiter itself --------------------------------------------------------------------


async def test_every_policy_is_configurable_and_enforced(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{POLICIES[name].setting: "1/minute" for name in POLICIES})
    limiter = RateLimiter(settings)
    try:
        for name in POLICIES:  # token_create included: agent token creation uses it
            await limiter.hit(name, "k")
            with pytest.raises(RateLimitedError):
                await limiter.hit(name, "k")
            await limiter.hit(name, "another key")
    finally:
        await limiter.close()


async def test_shared_budgets_are_a_moving_window_not_a_fixed_one(tmp_path: Path) -> None:
    """2 per second: hits at 0 s and 0.6 s; at 1.2 s the first has left the window, so one
    more is allowed and a second is not (a fixed window starting at 1.0 s would allow both)."""
    limiter = RateLimiter(make_settings(tmp_path, rate_publish_user="2/second"))
    try:
        await limiter.hit("publish_user", "t", "user", "u")
        await asyncio.sleep(0.6)
        await limiter.hit("publish_user", "t", "user", "u")
        with pytest.raises(RateLimitedError):
            await limiter.hit("publish_user", "t", "user", "u")
        await asyncio.sleep(0.6)
        await limiter.hit("publish_user", "t", "user", "u")
        with pytest.raises(RateLimitedError) as refused:
            await limiter.hit("publish_user", "t", "user", "u")
        assert refused.value.retry_after == 1.0  # rounded up to the documented minimum
    finally:
        await limiter.close()


async def test_per_connection_budgets_are_a_fixed_window(tmp_path: Path) -> None:
    """2 per second from the first hit: after the window ends both units are back at once."""
    limiter = RateLimiter(make_settings(tmp_path, rate_publish_connection="2/second"))
    try:
        for _ in range(2):
            await limiter.hit("publish_connection", "c")
        with pytest.raises(RateLimitedError):
            await limiter.hit("publish_connection", "c")
        await asyncio.sleep(1.1)
        for _ in range(2):
            await limiter.hit("publish_connection", "c")
    finally:
        await limiter.close()


async def test_memory_counters_are_checked_without_suspending(tmp_path: Path) -> None:
    """In memory a hit completes in the calling step: no await of a lock, a task or a
    thread (the hot path runs it three times per published message)."""
    limiter = RateLimiter(make_settings(tmp_path))
    try:
        for policy, key in (("ws_frames", ("c",)), ("publish_user", ("t", "user", "u"))):
            step = limiter.hit(policy, *key)
            with pytest.raises(StopIteration):
                step.send(None)
    finally:
        await limiter.close()


async def test_a_bound_budget_shares_the_counter_and_the_strategy_of_hit(
    tmp_path: Path,
) -> None:
    """``budget(policy, *key).check()`` is ``hit(policy, *key)`` with the key built once:
    the same counter (hits through either count against both), the same window kind, the
    same refusal; in memory it is decided at once, without a coroutine."""
    limiter = RateLimiter(
        make_settings(tmp_path, rate_publish_user="2/second", rate_publish_connection="2/second")
    )
    try:
        user = limiter.budget("publish_user", "t", "user", "u")
        assert user.check() is None
        await limiter.hit("publish_user", "t", "user", "u")
        with pytest.raises(RateLimitedError) as refused:
            user.check()
        assert refused.value.retry_after == 1.0
        with pytest.raises(RateLimitedError):
            await limiter.hit("publish_user", "t", "user", "u")
        assert limiter.budget("publish_user", "t", "user", "other").check() is None

        conn = limiter.budget("publish_connection", "c")
        await limiter.hit("publish_connection", "c")
        assert conn.check() is None
        with pytest.raises(RateLimitedError):
            conn.check()
        await asyncio.sleep(1.1)  # a fixed window: both units are back at once
        assert conn.check() is None
        assert conn.check() is None
        # A moving window: the hits at 0 s left it by now, one at a time.
        assert user.check() is None
        assert user.check() is None
        with pytest.raises(RateLimitedError):
            user.check()
    finally:
        await limiter.close()


async def test_a_budget_on_redis_is_awaited_and_fails_like_hit(tmp_path: Path) -> None:
    """Off memory, ``check`` hands back the awaitable ``hit``: a fail-open policy lets the
    frame through when Redis is unreachable."""
    limiter = RateLimiter(make_settings(tmp_path, rate_limit_url="redis://127.0.0.1:1/0"))
    try:
        pending = limiter.budget("publish_user", "t", "user", "u").check()
        assert pending is not None
        await pending  # fails open: no exception
        assert limiter.budget("ws_frames", "c").check() is None  # per connection: in memory
    finally:
        await limiter.close()


async def test_expired_memory_counters_are_swept(tmp_path: Path) -> None:
    """Memory does not grow with the keys ever seen: once their window has passed, the
    periodic sweep (started by a later hit) drops them."""
    limiter = RateLimiter(
        make_settings(tmp_path, rate_publish_user="5/second", rate_ws_frames="5/second")
    )
    try:
        for i in range(100):
            await limiter.hit("publish_user", "t", "user", f"u{i}")
            await limiter.hit("ws_frames", f"c{i}")
        shared, local = limiter._shared_storage, limiter._local_storage
        assert isinstance(shared, MemoryStorage)
        assert (len(shared.events), len(local.storage)) == (100, 100)
        await asyncio.sleep(1.2)  # both windows over, and the next sweep is due
        await limiter.hit("publish_user", "t", "user", "late")
    finally:
        await limiter.close()  # waits for the sweep in progress
    assert list(shared.events) == ["LIMITER/publish_user/t/user/late/5/1/second"]
    assert len(local.storage) == 0


async def test_a_bad_rate_setting_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BAYCHAT_RATE_LOGIN_IP"):
        RateLimiter(make_settings(tmp_path, rate_login_ip="lots"))


async def test_authentication_limits_fail_closed_and_others_open_when_redis_is_down(
    tmp_path: Path,
) -> None:
    with own_redis() as redis:
        settings = make_settings(tmp_path, rate_limit_url=redis.url)
        async with live_server(settings) as server:
            tenant = await server.tenant()
            user = await server.user(tenant)
            tokens = await server.login(tenant, user)  # counters in Redis work
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            redis.stop(kill=True)

            async with server.http() as http:
                login_answer = await http.post(
                    "/api/v1/auth/login",
                    json={"tenant": tenant.slug, "email": user.email, "password": PASSWORD},
                )
                refresh = await http.post(
                    "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                )
                write = await http.post("/api/v1/channels", json={"name": "open"}, headers=auth)
            ws = await server.connect(tokens["access_token"])  # ws_connect fails open
            await server.channel(tenant, "general", user)
            ack = await _publish(ws, "general", "p")  # publish_user fails open

    assert login_answer.status_code == 503
    assert login_answer.json()["error"]["code"] == "unavailable"
    assert refresh.status_code == 503
    assert write.status_code == 201
    assert ack["type"] == "ack"


async def test_unavailable_is_what_a_fail_closed_policy_raises(tmp_path: Path) -> None:
    with own_redis() as redis:
        limiter = RateLimiter(make_settings(tmp_path, rate_limit_url=redis.url))
        redis.stop(kill=True)
        try:
            with pytest.raises(UnavailableError):
                await limiter.hit("login_account", "k")
            await limiter.hit("http_write", "k")  # fails open: no exception
        finally:
            await limiter.close()
