"""The GDPR export: everything the store holds about one user, and nothing about anyone else.

What is included: the profile, every session (including revoked and expired ones, with the
user agent and address they were opened from), channel memberships, the channels and agents
the user created, the audit entries of their own actions and of actions on them, and every
message the user wrote, decrypted. Other people appear only as what the
user's own records point at (a channel's name), never with their own data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from protocol.errors import NotFoundError
from storage.crypto import MessageCipher
from storage.engine import Engine
from storage.scope import TenantScope

_PAGE = 1000


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat()


async def export_user(
    engine: Engine, cipher: MessageCipher, scope: TenantScope, user_id: str
) -> dict[str, Any]:
    tenant_id = scope.tenant_id
    async with engine.transaction("export_user", tenant_id=tenant_id) as tx:
        user = await tx.fetchrow(
            "SELECT * FROM users WHERE tenant_id = $1 AND id = $2", tenant_id, user_id
        )
        if user is None:
            raise NotFoundError("no such user")
        scope.check(user)
        tenant = await tx.fetchrow("SELECT id, slug FROM tenants WHERE id = $1", tenant_id)
        sessions = scope.check_all(
            await tx.fetch(
                "SELECT * FROM sessions WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at",
                tenant_id,
                user_id,
            )
        )
        memberships = scope.check_all(
            await tx.fetch(
                "SELECT m.tenant_id, m.channel_id, m.added_at, c.name, c.private"
                " FROM channel_members m JOIN channels c ON c.id = m.channel_id"
                " WHERE m.tenant_id = $1 AND m.user_id = $2 ORDER BY c.name",
                tenant_id,
                user_id,
            )
        )
        created = scope.check_all(
            await tx.fetch(
                "SELECT tenant_id, id, name, private, created_at FROM channels"
                " WHERE tenant_id = $1 AND created_by = $2 ORDER BY name",
                tenant_id,
                user_id,
            )
        )
        agents = scope.check_all(
            await tx.fetch(
                "SELECT tenant_id, id, name, created_at, disabled_at FROM agents"
                " WHERE tenant_id = $1 AND created_by = $2 ORDER BY name",
                tenant_id,
                user_id,
            )
        )
        audit = scope.check_all(
            await tx.fetch(
                "SELECT tenant_id, actor_kind, actor_id, action, target, ip, result, at"
                " FROM audit_log WHERE tenant_id = $1 AND (actor_id = $2 OR target = $3)"
                " ORDER BY seq",
                tenant_id,
                user_id,
                f"user:{user_id}",
            )
        )
        names = {
            str(r["id"]): str(r["name"])
            for r in scope.check_all(
                await tx.fetch(
                    "SELECT tenant_id, id, name FROM channels WHERE tenant_id = $1", tenant_id
                )
            )
        }
    messages: list[dict[str, Any]] = []
    after = ""
    while True:
        async with engine.transaction("export_messages", tenant_id=tenant_id) as tx:
            rows = scope.check_all(
                await tx.fetch(
                    "SELECT * FROM messages WHERE tenant_id = $1 AND sender_id = $2 AND id > $3"
                    " ORDER BY id LIMIT $4",
                    tenant_id,
                    user_id,
                    after,
                    _PAGE,
                )
            )
        if not rows:
            break
        after = str(rows[-1]["id"])
        for row in rows:
            body = cipher.decrypt(tenant_id, row["channel_id"], row["id"], row["envelope"])
            messages.append(
                {
                    "channel": names.get(str(row["channel_id"])),
                    "channel_id": row["channel_id"],
                    "seq": int(row["seq"]),
                    "message_id": row["id"],
                    "client_msg_id": row["client_msg_id"],
                    "body": body.decode(),
                    "sent_at": _iso(row["sent_at"]),
                }
            )
    messages.sort(key=lambda m: (m["sent_at"] or "", m["channel_id"], m["seq"]))
    return {
        "exported_at": datetime.now(UTC).isoformat(),
        "tenant": {"id": tenant_id, "slug": None if tenant is None else tenant["slug"]},
        "user": {
            "id": user["id"],
            "email": user["email"],
            "role": user["role"],
            "disabled": bool(user["disabled"]),
            "created_at": _iso(user["created_at"]),
        },
        "sessions": [
            {
                "id": s["id"],
                "created_at": _iso(s["created_at"]),
                "last_used_at": _iso(s["last_used_at"]),
                "expires_at": _iso(s["expires_at"]),
                "revoked_at": _iso(s["revoked_at"]),
                "user_agent": s["user_agent"],
                "ip": s["ip"],
            }
            for s in sessions
        ],
        "memberships": [
            {
                "channel": m["name"],
                "channel_id": m["channel_id"],
                "private": bool(m["private"]),
                "added_at": _iso(m["added_at"]),
            }
            for m in memberships
        ],
        "channels_created": [
            {
                "channel": c["name"],
                "channel_id": c["id"],
                "private": bool(c["private"]),
                "created_at": _iso(c["created_at"]),
            }
            for c in created
        ],
        "agents_created": [
            {
                "id": a["id"],
                "name": a["name"],
                "created_at": _iso(a["created_at"]),
                "disabled_at": _iso(a["disabled_at"]),
            }
            for a in agents
        ],
        "audit_entries": [_audit_entry(e, user_id) for e in audit],
        "messages": messages,
    }


def _audit_entry(row: Any, user_id: str) -> dict[str, Any]:
    """An audit entry by or about the user. Who else acted, on whom else, and from which
    address someone else acted, is other people's data: left out."""
    own = row["actor_id"] == user_id
    target = str(row["target"])
    return {
        "at": _iso(row["at"]),
        "action": row["action"],
        "result": row["result"],
        "by": "you" if own else row["actor_kind"],
        "ip": row["ip"] if own else None,
        "target": target
        if target == f"user:{user_id}" or not target.startswith("user:")
        else "another user",
    }
