"""The scope authority: the one place that turns a verified identity into a TenantScope.

Storage refuses to build scopes itself; it hands its issuing capability to this module
only, and every other module asks here.
"""

from __future__ import annotations

from server.auth.principal import Principal
from storage.scope import TenantScope, issuer_capability

_CAPABILITY = issuer_capability()


def scope_for(principal: Principal) -> TenantScope:
    """For a principal whose token was verified."""
    return TenantScope._issue(_CAPABILITY, principal.tenant_id, principal.id, principal.kind)


def scope_for_login(tenant_id: str) -> TenantScope:
    """For the auth layer itself, while it checks credentials presented for ``tenant_id``."""
    return TenantScope._issue(_CAPABILITY, tenant_id, "login", "login")


def scope_for_system(tenant_id: str) -> TenantScope:
    """For internal actors acting on entries that an authenticated gateway produced (the
    persistence worker, the broker's seeding)."""
    return TenantScope._issue(_CAPABILITY, tenant_id, "system", "system")


def scope_for_operator(tenant_id: str) -> TenantScope:
    """For the operator's CLI, which runs with the server's own configuration."""
    return TenantScope._issue(_CAPABILITY, tenant_id, "operator", "operator")
