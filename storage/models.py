"""Plain records that cross the store seam. Bodies here are always plaintext; only
``storage.messages`` sees envelopes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["owner", "admin", "member"]
Plan = Literal["free", "paid"]
ROLES: tuple[Role, ...] = ("owner", "admin", "member")
PLANS: tuple[Plan, ...] = ("free", "paid")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    slug: str
    plan: Plan
    created_at: int


@dataclass(frozen=True, slots=True)
class User:
    tenant_id: str
    id: str
    email: str
    password_hash: str
    role: Role
    disabled: bool
    created_at: int


@dataclass(frozen=True, slots=True)
class Channel:
    tenant_id: str
    id: str
    name: str
    private: bool
    created_by: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Message:
    tenant_id: str
    channel_id: str
    channel: str
    seq: int
    id: str
    sender_id: str
    body: str
    sent_at: int
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class Session:
    tenant_id: str
    id: str
    user_id: str
    created_at: int
    last_used_at: int
    expires_at: int
    revoked_at: int | None
    user_agent: str
    ip: str
