"""This node's cache of credential state: is a session or an agent token still live, and
with which role or scopes.

Authentication consults it on every request and every WebSocket frame, so the hot path is
a dictionary lookup. Freshness:

* Control events invalidate it at once (``on_control``): revocations, kills, disables and
  role changes are published after they commit, and every node drops what they touch.
* Entries also expire after ``ttl_s``, which bounds staleness should an event be lost.
* A lookup that raced an invalidation is not cached: ``put`` takes the ``epoch`` read
  before the lookup and drops the entry if an event arrived meanwhile.

Bounded: past ``max_entries`` the oldest entries are evicted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from protocol.codes import ErrorCode
from server.broker.base import ControlEvent
from storage.agents import Grant
from storage.models import Role

CredentialKey = tuple[str, str]  # (tenant id, session id or agent token id)

# Control event kinds this cache (and server.node) understand. ``subject`` is a session or
# agent token id for SESSION_REVOKED, a user or agent id for the other two.
SESSION_REVOKED = "session_revoked"
PRINCIPAL_DISABLED = "principal_disabled"
PRINCIPAL_CHANGED = "principal_changed"


@dataclass(frozen=True, slots=True)
class Credential:
    tenant_id: str
    principal_id: str
    credential_id: str
    role: Role
    scopes: tuple[Grant, ...] | None
    expires_at_ms: int | None  # None: never
    refused: ErrorCode | None  # None: live; else why it is refused (revoked, ...)


class CredentialCache:
    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CredentialKey, tuple[float, Credential]] = OrderedDict()
        # token digest -> (tenant id, token id): fixed once issued, so only size-bounded.
        self._digests: OrderedDict[str, CredentialKey] = OrderedDict()
        self.epoch = 0

    def get(self, key: CredentialKey) -> Credential | None:
        found = self._entries.get(key)
        if found is None:
            return None
        stored_at, credential = found
        if self._clock() - stored_at > self.ttl_s:
            del self._entries[key]
            return None
        return credential

    def put(self, key: CredentialKey, credential: Credential, epoch: int) -> None:
        if epoch != self.epoch or self.ttl_s <= 0:
            return  # an invalidation arrived while this was being read
        self._entries[key] = (self._clock(), credential)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def token_key(self, digest: str) -> CredentialKey | None:
        return self._digests.get(digest)

    def remember_token(self, digest: str, key: CredentialKey) -> None:
        self._digests[digest] = key
        while len(self._digests) > self.max_entries:
            self._digests.popitem(last=False)

    def on_control(self, event: ControlEvent) -> None:
        if event.kind == SESSION_REVOKED:
            self.epoch += 1
            self._entries.pop((event.tenant_id, event.subject), None)
        elif event.kind in (PRINCIPAL_DISABLED, PRINCIPAL_CHANGED):
            self.epoch += 1
            stale = [
                key
                for key, (_, cred) in self._entries.items()
                if cred.tenant_id == event.tenant_id and cred.principal_id == event.subject
            ]
            for key in stale:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
