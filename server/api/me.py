"""GET /api/v1/me/export and DELETE /api/v1/me: the caller's GDPR rights over their data."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from protocol.errors import ForbiddenError
from server.api.http import authenticate, json_response, read_body, runtime_of
from server.api.schemas import EraseRequest, EraseResponse
from server.auth.authority import scope_for
from server.auth.credentials import PRINCIPAL_DISABLED, SESSION_REVOKED
from server.auth.principal import Principal
from server.broker.base import ControlEvent
from server.keyfiles import erasure_ledger
from storage.auditchain import Actor, AuditRecord
from storage.erasure import Erasure
from storage.export import export_user
from storage.scope import TenantScope

_log = logging.getLogger("baychat.gdpr")
SWEEP_AFTER_S = 2.0  # long enough for messages published just before to reach the store
_sweeps: set[asyncio.Task[None]] = set()


async def _user(request: Request) -> Principal:
    principal = await authenticate(request)
    if principal.kind != "user":
        raise ForbiddenError("only a user can export or erase their own data")
    return principal


async def export(request: Request) -> Response:
    principal = await _user(request)
    store = runtime_of(request).store
    scope = scope_for(principal)
    doc = await export_user(store.engine, store.cipher, scope, principal.id)
    await store.audit.record(
        scope, AuditRecord(Actor("user", principal.id), "user.export", f"user:{principal.id}")
    )
    return json_response(
        doc,
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="baychat-export.json"',
        },
    )


async def erase(request: Request) -> Response:
    principal = await _user(request)
    body = await read_body(request, EraseRequest)
    runtime = runtime_of(request)
    scope = scope_for(principal)
    user = await runtime.store.users.get(scope, principal.id)
    if not await runtime.auth.passwords.verify(user.password_hash, body.password):
        raise ForbiddenError("the password does not match")
    store = runtime.store
    erasure = Erasure(store.engine, store.cipher, erasure_ledger(runtime.settings), store.audit)
    result = await erasure.erase_user(scope, principal.id, actor=Actor("user", principal.id))
    # Every node closes this user's sockets and drops their cached credentials.
    await runtime.broker.publish_control(
        ControlEvent(PRINCIPAL_DISABLED, principal.tenant_id, principal.id)
    )
    for session_id in result.sessions_revoked:
        await runtime.broker.publish_control(
            ControlEvent(SESSION_REVOKED, principal.tenant_id, session_id)
        )
    # The broker's recent windows may still hold the erased bodies in plaintext.
    await runtime.broker.forget_recent(principal.tenant_id)
    _sweep_later(erasure, scope, principal.id)
    _log.info("user erased", extra={"event": "gdpr.erase", "tenant_id": principal.tenant_id})
    return json_response(
        EraseResponse(True, result.messages_tombstoned, len(result.sessions_revoked)),
        headers={"Cache-Control": "no-store"},
    )


def _sweep_later(erasure: Erasure, scope: TenantScope, user_id: str) -> None:
    async def sweep() -> None:
        await asyncio.sleep(SWEEP_AFTER_S)
        try:
            late = await erasure.tombstone_messages(scope, user_id)
        except Exception:
            _log.exception("erasure sweep failed; the erasure ledger keeps the request")
            return
        if late:
            _log.info("erasure sweep tombstoned late messages", extra={"count": late})

    task = asyncio.create_task(sweep(), name="erasure-sweep")
    _sweeps.add(task)
    task.add_done_callback(_sweeps.discard)
