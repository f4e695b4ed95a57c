"""The ``baychat`` command. ``create`` commands print one JSON object on stdout."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from protocol.errors import BayChatError
from server import gcpolicy
from server.auth.authority import scope_for_operator
from server.auth.passwords import PasswordPolicyError
from server.config import Settings
from server.runtime import app_role, make_passwords, open_store
from storage.engine import PrivilegedRoleError
from storage.migrations import SchemaVersionError
from storage.migrations import migrate as run_migrations
from storage.models import PLANS, ROLES
from storage.store import Store

T = TypeVar("T")
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def _emit(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc))


def _run(work: Callable[[Store], Awaitable[T]], *, owner: bool = False) -> T:
    settings = Settings.from_env()

    async def main() -> T:
        if settings.migrate_on_start or owner:
            owner_store = open_store(settings, owner=True)
            await owner_store.open(migrate_schema=True, app_role=app_role(settings))
            await owner_store.close()
        store = open_store(settings, owner=owner)
        # The owner's connection is the migrating one: only the application's is role-checked.
        await store.open(migrate_schema=owner, app_role=app_role(settings))
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (BayChatError, PasswordPolicyError, PrivilegedRoleError, SchemaVersionError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """BayChat: a multi-tenant real-time chat server."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Run the gateway (and, embedded, the persistence worker)."""
    import uvicorn

    from server.app import create_app
    from server.logs import logging_config, uvicorn_level
    from server.wsprotocol import HttpEntry, SocketProtocol

    settings = Settings.from_env()
    gcpolicy.tune()
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,
        # /ws upgrades go straight from the first bytes to SocketProtocol; every other
        # request to uvicorn's httptools protocol, as before (server.wsprotocol.HttpEntry).
        http=HttpEntry,
        ws=SocketProtocol,
        ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s,
        # X-Forwarded-* are read by server.proxies, and only from BAYCHAT_TRUSTED_PROXIES.
        proxy_headers=False,
        server_header=False,
        log_config=logging_config(settings.log_format, settings.log_level),
        log_level=uvicorn_level(settings.log_level),
        # server.middleware writes the access log (path without query string, request id).
        access_log=False,
    )


@main.command()
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    envvar="BAYCHAT_WORKER_HTTP_PORT",
    help="Serve /healthz, /readyz and /metrics on this port (default: no HTTP).",
)
@click.option(
    "--http-host",
    default="127.0.0.1",
    show_default=True,
    envvar="BAYCHAT_WORKER_HTTP_HOST",
    help="Address of that endpoint.",
)
def worker(workers: int, http_port: int | None, http_host: str) -> None:
    """Run persistence workers against the shared log. Gateways of the same cluster run
    with BAYCHAT_EMBEDDED_WORKER=0."""
    import logging.config

    from server.logs import logging_config
    from server.workers import run_workers

    settings = Settings.from_env()
    log_config = logging_config(settings.log_format, settings.log_level)
    logging.config.dictConfig(log_config)
    http = (http_host, http_port) if http_port is not None else None
    # The loop `baychat serve` gets from uvicorn (its socket I/O to Postgres and Redis is
    # most of a worker's time).
    import uvloop

    try:
        gcpolicy.tune()
        uvloop.run(run_workers(settings, workers, http=http, log_config=log_config))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def migrate() -> None:
    """Apply pending schema migrations (as the owner role)."""
    settings = Settings.from_env()

    async def work() -> list[int]:
        store = open_store(settings, owner=True)
        await store.engine.open()
        try:
            return await run_migrations(store.engine, app_role=app_role(settings))
        finally:
            await store.close()

    applied = asyncio.run(work())
    _emit({"applied": applied})


@main.group()
def tenant() -> None:
    """Manage tenants."""


@tenant.command("create")
@click.argument("slug")
@click.option("--plan", type=click.Choice(PLANS), default="free", show_default=True)
def tenant_create(slug: str, plan: str) -> None:
    if not _SLUG.fullmatch(slug):
        raise click.BadParameter("lowercase letters, digits and dashes", param_hint="SLUG")

    async def work(store: Store) -> dict[str, Any]:
        created = await store.tenants.create(slug, plan)  # type: ignore[arg-type]
        return {"id": created.id, "slug": created.slug, "plan": created.plan}

    _emit(_run(work))


@main.group()
def user() -> None:
    """Manage users."""


@user.command("create")
@click.argument("tenant_slug")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True)
@click.option("--password-stdin", is_flag=True, required=True, help="Read the password from stdin.")
def user_create(tenant_slug: str, email: str, role: str, password_stdin: bool) -> None:
    password = sys.stdin.readline().rstrip("\r\n")
    settings = Settings.from_env()

    async def work(store: Store) -> dict[str, Any]:
        found = await store.tenants.by_slug(tenant_slug)
        password_hash = await make_passwords(settings).hash(password)
        created = await store.users.create(
            scope_for_operator(found.id),
            email.lower(),
            password_hash,
            role,  # type: ignore[arg-type]
        )
        return {"id": created.id, "email": created.email, "role": created.role}

    _emit(_run(work))


@main.group()
def audit() -> None:
    """Inspect the audit log."""


@audit.command("verify")
@click.argument("tenant_slug", required=False)
def audit_verify(tenant_slug: str | None) -> None:
    """Walk each tenant's hash chain (or TENANT_SLUG's); exit 1 naming the first entry
    altered, removed or reordered."""

    async def work(store: Store) -> list[dict[str, Any]]:
        tenants = [await store.tenants.by_slug(tenant_slug)] if tenant_slug else None
        reports = []
        for found in tenants or await store.tenants.all():
            checked, problem = await store.audit.verify(scope_for_operator(found.id))
            report: dict[str, Any] = {"tenant": found.slug, "entries": checked, "ok": not problem}
            if problem is not None:
                report["problem"] = {
                    "kind": problem.kind,
                    "seq": problem.seq,
                    "entry_id": problem.entry_id,
                    "detail": problem.describe(),
                }
            reports.append(report)
        return reports

    reports = _run(work)
    for report in reports:
        _emit(report)
    broken = [r for r in reports if not r["ok"]]
    for report in broken:
        click.echo(f"{report['tenant']}: {report['problem']['detail']}", err=True)
    if broken:
        sys.exit(1)


@main.command()
@click.option("--slug", default="demo", show_default=True)
def demo(slug: str) -> None:
    """Create a demo tenant, two users and a channel, and print how to log in."""
    import secrets

    settings = Settings.from_env()
    password = secrets.token_urlsafe(12)

    async def work(store: Store) -> dict[str, Any]:
        created = await store.tenants.create(slug, "free")
        scope = scope_for_operator(created.id)
        hashed = await make_passwords(settings).hash(password)
        alice = await store.users.create(scope, "alice@example.com", hashed, "owner")
        await store.users.create(scope, "bob@example.com", hashed, "member")
        await store.channels.create(scope, "general", private=False, created_by=alice.id)
        return {
            "tenant": slug,
            "users": ["alice@example.com", "bob@example.com"],
            "password": password,
            "channel": "general",
        }

    doc = _run(work)
    _emit(doc)
    click.echo(
        "\nLog in:\n  curl -s localhost:8000/api/v1/auth/login -H 'content-type: application/json'"
        f' -d \'{{"tenant": "{slug}", "email": "alice@example.com",'
        f' "password": "{password}"}}\'\n'
        "then connect to ws://localhost:8000/ws with the header"
        " 'Authorization: Bearer <access_token>' (clients that send no Origin must; a"
        " browser page on BAYCHAT_ALLOWED_ORIGINS sends"
        ' {"type": "auth", "token": "<access_token>"} instead)',
        err=True,
    )


def _register_operations() -> None:
    from server.cli_data import backup, restore, tenant_delete
    from server.cli_keys import keys
    from server.cli_keystore import keys_backup, keys_restore

    keys.add_command(keys_backup)
    keys.add_command(keys_restore)
    main.add_command(keys)
    main.add_command(backup)
    main.add_command(restore)
    tenant.add_command(tenant_delete)


_register_operations()


if __name__ == "__main__":
    main()
