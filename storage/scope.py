"""Tenant scopes: the only way into tenant data.

A ``TenantScope`` cannot be built by calling the class: it is issued by
``server.auth.authority`` from a verified token (or, for operators and the persistence
worker, from an explicit trusted path). Store methods that touch tenant data take one and
filter by its tenant id; a row of another tenant that reaches a scoped method raises
``TenantIsolationError`` instead of being returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from protocol.errors import TenantIsolationError

PrincipalKind = Literal["user", "agent", "system", "operator", "login"]
_log = logging.getLogger("baychat.isolation")
_ISSUER = object()


class TenantScope:
    __slots__ = ("principal_id", "principal_kind", "tenant_id")

    tenant_id: str
    principal_id: str
    principal_kind: PrincipalKind

    def __init__(self, *_: object, **__: object) -> None:
        raise TypeError("TenantScope is issued by server.auth.authority, not constructed")

    @classmethod
    def _issue(
        cls, issuer: object, tenant_id: str, principal_id: str, kind: PrincipalKind
    ) -> TenantScope:
        if issuer is not _ISSUER:
            raise TypeError("TenantScope is issued by server.auth.authority, not constructed")
        if not tenant_id:
            raise ValueError("a scope needs a tenant id")
        scope = object.__new__(cls)
        object.__setattr__(scope, "tenant_id", tenant_id)
        object.__setattr__(scope, "principal_id", principal_id)
        object.__setattr__(scope, "principal_kind", kind)
        return scope

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("TenantScope is immutable")

    def __repr__(self) -> str:
        return f"TenantScope(tenant={self.tenant_id}, {self.principal_kind}={self.principal_id})"

    def check(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return ``row`` if it belongs to this scope's tenant; otherwise fail closed."""
        if row["tenant_id"] != self.tenant_id:
            _log.critical(
                "tenant isolation violation",
                extra={"scope_tenant": self.tenant_id, "row_tenant": row["tenant_id"]},
            )
            raise TenantIsolationError()
        return row

    def check_all(self, rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return [self.check(row) for row in rows]


def issuer_capability() -> object:
    """Handed to the auth layer once; storage itself never issues scopes."""
    return _ISSUER
