"""Who is calling: the verified identity behind a request or a connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storage.agents import Grant
from storage.models import Role

PrincipalKind = Literal["user", "agent"]
# ``expires_at`` of a credential that never expires (9999-12-31T23:59:59Z).
NEVER = 253402300799


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    id: str  # user id or agent id
    kind: PrincipalKind
    role: Role  # the user's current role; agents hold no role ("member")
    session_id: str  # a user's session, or an agent's token id
    expires_at: int  # unix seconds: when the credential stops being valid (NEVER: it doesn't)
    scopes: tuple[Grant, ...] | None = None  # an agent token's grants; None for users

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.role in ("owner", "admin")
