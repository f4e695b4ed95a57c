"""Who is calling: the verified identity behind a request or a connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storage.models import Role

PrincipalKind = Literal["user", "agent"]


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    id: str  # user id or agent id
    kind: PrincipalKind
    role: Role
    session_id: str
    expires_at: int  # unix seconds: when the credential stops being valid

    @property
    def is_admin(self) -> bool:
        return self.role in ("owner", "admin")
