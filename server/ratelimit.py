"""Rate limits: named policies over the ``limits`` library, one module for HTTP and WebSocket.

Counters live in process memory in the embedded form, and in Redis when
``BAYCHAT_RATE_LIMIT_URL`` (or, failing that, ``BAYCHAT_BROKER_URL``) is a Redis URL, so
that every gateway of a cluster shares one counter per key. Per-connection policies always
count in memory: a connection lives on one gateway, and its counter dies with it.

Guarantees of ``RateLimiter.hit``:

* it consumes one unit of the policy's budget for the key and returns, or raises
  ``RateLimitedError`` with ``retry_after`` (seconds) when the budget is spent;
* when the counter storage cannot be reached, a ``fail_closed`` policy (authentication)
  raises ``UnavailableError`` (the request is refused) and any other policy lets the call
  through (fail open) and logs that it did.

Keys never hold an email address in the clear: account keys are hashed.

Memory counters are the ``limits`` library's synchronous in-memory storage and strategies,
called inline on the event loop: a hit is a dict update under an uncontended lock, with no
await, no task and no thread hop. (Its asynchronous twin ran an expiry pass that hopped to a
thread pool once per key, continuously under load: about a quarter of a published message's
CPU, docs/BENCHMARKS.md. Left to itself the synchronous one starts a timer thread every
10 ms of traffic, and the loop waits for each to start.) Expiry only frees memory: a
strategy never trusts an expired entry, it compares times itself. So the library's expiry
pass runs here once per ``SWEEP_S`` on the loop's executor, one thread hop per second for
all keys. Redis counters go through the library's asynchronous Redis storage, except that
``hit`` makes the library's moving-window hit through a batch of script calls
(``server.ratelimit_redis``): same key, list and algorithm, many hits to a round trip. The
strategies are the same either way.

When the counters live in the broker's own Redis, a publish need not check its shared
budget in a round trip of its own: ``deferred`` hands the gateway a ``SharedBudget`` that rides
with the draft, and the broker's publish script makes the very same moving-window hit
(same key, same list, same algorithm) in the step that publishes. Every other check of the
policy (the HTTP path, other gateways) sees those hits as if ``limits`` had made them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn

from limits import RateLimitItem, parse, strategies
from limits.aio.storage import RedisStorage
from limits.storage import MemoryStorage
from limits.storage.memory import Entry

from protocol.errors import RateLimitedError, UnavailableError
from server.broker.base import SharedBudget
from server.config import Settings
from server.ratelimit_redis import RedisWindowHits

_log = logging.getLogger("baychat.ratelimit")
STORAGE_TIMEOUT_S = 1.0
SWEEP_S = 1.0  # how often expired in-memory counters are dropped


def principal_key(tenant_id: str, kind: str, principal_id: str) -> tuple[str, str, str]:
    """The key of a per-principal policy (``publish_user``, ``token_create``, ...). The
    tenant is written as a Redis Cluster hash tag, as the broker writes it in its own keys
    (``server.broker.redis_keys``), so that a shared counter lives in its tenant's slot and
    the publish script that spends the publish budget touches one slot only."""
    return (f"{{{tenant_id}}}", kind, principal_id)


class _SweptMemoryStorage(MemoryStorage):
    """``limits``' synchronous memory storage with its expiry pass run by ``sweep`` (called
    off the loop once per ``SWEEP_S``) instead of a timer thread started on every hit."""

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the one __init__ starts

    def _MemoryStorage__schedule_expiry(self) -> None:  # the library's per-hit timer
        return None

    def _acquire(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """The library's moving-window hit, without the ``IndexError`` it raises and catches
        on every hit while fewer than ``limit`` entries are in the list."""
        if amount > limit:
            return False
        with self.locks[key]:
            events = self.events.setdefault(key, [])
            at = limit - amount
            if len(events) > at and events[at].atime >= time.time() - expiry:
                return False
            events[:0] = [Entry(expiry)] * amount
            return True

    def _incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """The library's fixed-window increment (an expired window starts again at this
        hit), in one pass: the library's reads the clock and the key twice and calls its
        per-hit timer hook, two of the three budget checks of every published message
        (docs/BENCHMARKS.md). No lock: only the loop's thread counts, and the one other
        thread that touches these counters, the expiry pass, takes none for them either
        (it drops a window only once its time is up, which this rereads)."""
        now = time.time()
        if self.expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
        value = self.storage[key] + amount
        self.storage[key] = value
        if value == amount:
            self.expirations[key] = now + expiry
        return value

    # What the strategies call (``limits`` wraps these in its error translator, which has
    # nothing to translate here: a ``Budget`` calls the functions themselves).
    acquire_entry = _acquire
    incr = _incr

    def sweep(self) -> None:
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        # The pass empties a moving window's list but keeps the key; drop it, under the
        # key's lock (a hit holds it from reading the list to inserting into it).
        # list() copies the items in one C call: the loop thread may add keys meanwhile, and
        # iterating the live dict from this thread could fail mid-way.
        for key in [k for k, entries in list(self.events.items()) if not entries]:
            with self.locks[key]:
                if not self.events.get(key):
                    self.events.pop(key, None)
                    self.locks.pop(key, None)


# ``limits`` wraps a storage's methods in an error translator once per class it is defined
# on, so a subclass's calls went through two: keep one (``incr`` and ``acquire_entry`` are
# this class's own, wrapped once).
for _name in ("get", "get_expiry", "clear", "get_moving_window"):
    setattr(_SweptMemoryStorage, _name, getattr(MemoryStorage, _name))


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    setting: str  # the Settings field (BAYCHAT_<SETTING>) that holds its rate
    fail_closed: bool = False
    local: bool = False  # counted in this process only (per-connection budgets)


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("login_ip", "rate_login_ip", fail_closed=True),
        Policy("login_account", "rate_login_account", fail_closed=True),
        Policy("login_account_ip", "rate_login_account_ip", fail_closed=True),
        Policy("refresh", "rate_refresh", fail_closed=True),
        Policy("token_create", "rate_token_create", fail_closed=True),
        Policy("http_write", "rate_http_write"),
        Policy("ws_connect", "rate_ws_connect"),
        Policy("ws_frames", "rate_ws_frames", local=True),
        Policy("publish_connection", "rate_publish_connection", local=True),
        Policy("publish_user", "rate_publish_user"),
    )
}


def storage_url(settings: Settings) -> str:
    """Where shared counters live: an explicit URL, else the broker's Redis, else memory."""
    if settings.rate_limit_url:
        return settings.rate_limit_url
    if settings.broker_url.startswith(("redis://", "rediss://")):
        from server.broker.redis import RedisOptions

        return RedisOptions.split_url(settings.broker_url)[0]  # without the broker's options
    return "memory://"


def account_key(tenant: str, email: str) -> str:
    """A stable, non-reversible counter key for a login account."""
    return hashlib.sha256(f"{tenant}\x00{email.lower()}".encode()).hexdigest()[:32]


def _open_shared_storage(url: str, prefix: str) -> _SweptMemoryStorage | RedisStorage:
    if url.startswith("memory:"):
        return _SweptMemoryStorage()
    if url.startswith(("redis://", "rediss://")):
        return RedisStorage(
            f"async+{url}",
            implementation="redispy",
            key_prefix=f"{prefix}:rl",
            socket_timeout=STORAGE_TIMEOUT_S,
            socket_connect_timeout=STORAGE_TIMEOUT_S,
        )
    raise ValueError("unsupported rate limit storage URL (use memory:// or redis://)")


def _unavailable(policy: Policy, exc: Exception) -> None:
    """The counter storage failed: refuse (``UnavailableError``) for a fail-closed policy,
    else log and let the call through."""
    extra = {
        "event": "rate_limit.unavailable",
        "policy": policy.name,
        "error": exc.__class__.__name__,
    }
    if policy.fail_closed:
        _log.error("rate limit storage unavailable; refusing", extra=extra)
        raise UnavailableError("rate limiting unavailable; try again later") from None
    _log.warning("rate limit storage unavailable; allowing", extra=extra)


def _refusal(policy_name: str, reset_at: float) -> RateLimitedError:
    """The refusal of a spent budget, counted and logged (raised by the caller)."""
    retry_after = max(1.0, round(reset_at - time.time(), 1))
    from server import metrics  # here: server.metrics labels its counter by POLICIES

    metrics.rate_limited(policy_name)
    _log.warning(
        "rate limited",
        extra={"event": "rate_limit.hit", "policy": policy_name, "retry_after": retry_after},
    )
    return RateLimitedError(retry_after, f"rate limit exceeded ({policy_name})")


def _refuse(policy_name: str, reset_at: float) -> NoReturn:
    raise _refusal(policy_name, reset_at)


class Budget:
    """One policy's budget for one key, as ``RateLimiter.budget`` hands it out: the same
    counter, strategy and answers as ``RateLimiter.hit(policy, *key)``, with the counter
    key built once. A session holds one per budget it checks on every frame.

    In memory ``check`` decides at once, calling the storage the strategy would call
    (a fixed window's ``incr``, a moving window's ``acquire_entry``) without the strategy
    rebuilding the key string from its parts on every hit, and without a coroutine: the
    three checks of a published message were a fifth of the gateway's CPU per message at
    10,000 msgs/s (docs/BENCHMARKS.md). A Redis counter goes through ``RateLimiter.hit``.
    """

    __slots__ = (
        "_amount",
        "_expiry",
        "_item",
        "_key",
        "_limiter",
        "_moving",
        "_parts",
        "_policy",
        "_storage",
    )

    def __init__(
        self,
        limiter: RateLimiter,
        policy: Policy,
        item: RateLimitItem,
        parts: tuple[str, ...],
        storage: _SweptMemoryStorage | None,
        *,
        moving: bool,
    ) -> None:
        self._limiter = limiter
        self._policy = policy
        self._item = item
        self._parts = parts
        self._storage = storage
        self._moving = moving
        self._key = item.key_for(policy.name, *parts)  # what the strategies build per hit
        self._amount = item.amount
        self._expiry = item.get_expiry()

    def check(self) -> Coroutine[Any, Any, None] | None:
        """Consume one unit: None if allowed, ``RateLimitedError`` if the budget is spent
        (``UnavailableError`` as ``hit`` raises it), or, for a counter that is not in
        memory, a coroutine to await that does the same."""
        storage = self._storage
        if storage is None:
            return self._limiter.hit(self._policy.name, *self._parts)
        limiter = self._limiter
        if time.monotonic() >= limiter._next_sweep:
            limiter._sweep()
        try:
            if self._moving:
                if storage._acquire(self._key, self._amount, self._expiry):
                    return None
                reset_at = storage.get_moving_window(self._key, self._amount, self._expiry)[0]
                reset_at += self._expiry
            else:
                if storage._incr(self._key, self._expiry) <= self._amount:
                    return None
                reset_at = storage.get_expiry(self._key)
        except Exception as exc:
            _unavailable(self._policy, exc)
            return None
        _refuse(self._policy.name, reset_at)


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._items: dict[str, RateLimitItem] = {}
        for policy in POLICIES.values():
            rate = getattr(settings, policy.setting)
            try:
                self._items[policy.name] = parse(rate)
            except ValueError:
                raise ValueError(f"BAYCHAT_{policy.setting.upper()}: bad rate {rate!r}") from None
        self._shared_storage = _open_shared_storage(
            storage_url(settings), settings.rate_limit_prefix
        )
        self._local_storage = _SweptMemoryStorage()
        self._memory = [self._local_storage]
        # Shared budgets (logins, writes) use an exact moving window: no double burst at a
        # window edge, and no approximation that lets an extra attempt through right after
        # one. Per-connection budgets are checked on every frame, so they use the cheapest
        # strategy: a fixed window that starts at the connection's first frame.
        self._local = strategies.FixedWindowRateLimiter(self._local_storage)
        self._shared_now: strategies.MovingWindowRateLimiter | None = None
        self._remote_hits: RedisWindowHits | None = None
        if isinstance(self._shared_storage, _SweptMemoryStorage):
            self._shared_now = strategies.MovingWindowRateLimiter(self._shared_storage)
            self._memory.append(self._shared_storage)
        else:
            self._remote_hits = RedisWindowHits(self._shared_storage, timeout_s=STORAGE_TIMEOUT_S)
        # Budgets ride with a publish only where the broker's publish script can reach them:
        # the counters in the broker's own Redis (no separate BAYCHAT_RATE_LIMIT_URL).
        self._defers = (
            self._remote_hits is not None
            and not settings.rate_limit_url
            and settings.broker_url.startswith(("redis://", "rediss://"))
        )
        self.flood_strikes = settings.rate_flood_strikes
        self._next_sweep = 0.0
        self._sweeping: asyncio.Future[None] | None = None

    def budget(self, policy_name: str, *key: str) -> Budget:
        """``policy_name``'s budget for ``key``, to be hit many times (a session's own
        per-connection and per-user budgets, checked on every frame)."""
        policy = POLICIES[policy_name]
        item = self._items[policy_name]
        if policy.local:
            return Budget(self, policy, item, key, self._local_storage, moving=False)
        if isinstance(self._shared_storage, _SweptMemoryStorage):
            return Budget(self, policy, item, key, self._shared_storage, moving=True)
        return Budget(self, policy, item, key, None, moving=True)

    async def hit(self, policy_name: str, *key: str) -> None:
        """Consume one unit of ``policy_name`` for ``key`` (see the module docstring)."""
        policy = POLICIES[policy_name]
        item = self._items[policy_name]
        if time.monotonic() >= self._next_sweep:
            self._sweep()
        try:
            if policy.local or self._shared_now is not None:
                now = self._local if policy.local else self._shared_now
                assert now is not None
                if now.hit(item, policy_name, *key):
                    return
                reset_at, _ = now.get_window_stats(item, policy_name, *key)
            else:
                remote = self._remote_hits
                assert remote is not None
                # The library's moving window, batched (server/ratelimit_redis.py); a batch's
                # replies are awaited for at most STORAGE_TIMEOUT_S.
                refused_until = await remote.hit(item, policy_name, *key)
                if refused_until is None:
                    return
                reset_at = refused_until
        except Exception as exc:
            _unavailable(policy, exc)
            return
        _refuse(policy_name, reset_at)

    def deferred(self, policy_name: str, *key: str) -> SharedBudget | None:
        """The hit for ``policy_name`` as a ``SharedBudget`` for the broker to make with the
        publish, or None when the caller must ``hit`` now (counters in memory, or in a Redis
        the broker does not share)."""
        policy = POLICIES[policy_name]
        storage = self._shared_storage
        if not self._defers or policy.local or not isinstance(storage, RedisStorage):
            return None
        item = self._items[policy_name]

        def refused(reset_at: float) -> Exception:
            return _refusal(policy_name, reset_at)

        return SharedBudget(
            key=storage.bridge.prefixed_key(item.key_for(policy_name, *key)),
            limit=item.amount,
            window_s=item.get_expiry(),
            refused=refused,
        )

    def _sweep(self) -> None:
        """Drop expired in-memory counters, in the loop's executor (one hop for all keys)."""
        self._next_sweep = time.monotonic() + SWEEP_S
        if self._sweeping is not None and not self._sweeping.done():
            return
        loop = asyncio.get_running_loop()
        self._sweeping = loop.run_in_executor(None, self._sweep_memory)

    def _sweep_memory(self) -> None:
        for storage in self._memory:
            storage.sweep()

    async def close(self) -> None:
        if self._sweeping is not None:
            await asyncio.shield(self._sweeping)
        if self._remote_hits is not None:
            await self._remote_hits.close()
        bridge = getattr(self._shared_storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:  # already gone; nothing to release
                _log.debug("rate limit storage close failed")
