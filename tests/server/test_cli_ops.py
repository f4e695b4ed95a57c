"""The operator commands as an operator runs them: keys status, rotate, rewrap and retire;
backup and prune; tenant deletion with an owner's confirmation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from server.auth.authority import scope_for_operator
from server.runtime import make_passwords, open_store
from tests.harness import PASSWORD, make_settings
from tests.opsdata import tenant_with_channel, write_messages

CLI = [sys.executable, "-m", "server.cli"]


def baychat(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BAYCHAT_DATA_DIR": str(data), "BAYCHAT_KEY_RELOAD_INTERVAL": "0.05"}
    return subprocess.run(
        [*CLI, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def seed(data: Path, messages: int) -> tuple[str, str]:
    """A tenant with an owner and ``messages`` messages; returns (slug, tenant id)."""
    settings = make_settings(data)
    store = open_store(settings)
    await store.open(migrate_schema=True)
    try:
        tenant, channel = await tenant_with_channel(store)
        await write_messages(store, channel, messages)
        hashed = await make_passwords(settings).hash(PASSWORD)
        await store.users.create(
            scope_for_operator(tenant.id), "owner@example.com", hashed, "owner"
        )
    finally:
        await store.close()
    return tenant.slug, tenant.id


async def audit_actions(data: Path, tenant_id: str) -> list[str]:
    store = open_store(make_settings(data))
    await store.open()
    try:
        return [e.action async for e in store.audit.entries(scope_for_operator(tenant_id))]
    finally:
        await store.close()


async def test_master_key_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, tenant_id = await seed(data, 25)
    status = ok(baychat(data, "keys", "status"))["master_keys"]
    assert status["versions"] == {"1": {"loaded": True, "messages": 25}}
    ok(baychat(data, "backup"))  # a retained backup that needs version 1

    too_soon = baychat(data, "keys", "rotate", "--grace", "0.1")
    assert too_soon.returncode != 0
    assert "at least" in too_soon.stderr
    rotated = ok(baychat(data, "keys", "rotate", "--grace", "0.3"))
    assert rotated["version"] == 2
    await asyncio.sleep(0.3)

    rewrapped = ok(baychat(data, "keys", "rewrap", "--batch", "10"))
    assert rewrapped == {
        "target_version": 2,
        "rewrapped": 25,
        "remaining": 0,
        "unreadable": 0,
        "skipped_shredded_tenants": [],
    }
    status = ok(baychat(data, "keys", "status"))["master_keys"]
    assert status["versions"]["1"]["messages"] == 0
    assert status["versions"]["2"]["messages"] == 25

    in_use = baychat(data, "keys", "retire", "2")
    assert in_use.returncode != 0
    held = baychat(data, "keys", "retire", "1")
    assert held.returncode != 0
    assert "retained backup" in held.stderr
    ok(baychat(data, "keys", "retire", "1", "--ignore-backups"))
    versions = ok(baychat(data, "keys", "status"))["master_keys"]["versions"]
    assert set(versions) == {"2"}
    actions = await audit_actions(data, tenant_id)
    assert actions[-3:] == ["keys.rotate", "keys.rewrap", "keys.retire"]


async def test_jwt_rotation_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ok(baychat(data, "keys", "status"))["jwt_keys"]["signing"]
    rotated = ok(baychat(data, "keys", "rotate-jwt", "--grace", "0.3"))
    assert rotated["previous"] == first
    # Past the grace (whatever the time a command takes to start), the new key signs and
    # the old one still may not go: tokens it signed may still be valid.
    await asyncio.sleep(0.4)
    assert ok(baychat(data, "keys", "status"))["jwt_keys"]["signing"] == rotated["kid"]
    stopped = baychat(data, "keys", "retire-jwt", first)
    assert stopped.returncode != 0
    assert "may still be valid" in stopped.stderr
    # Within a grace, the key being replaced still signs: it may not go either.
    again = ok(baychat(data, "keys", "rotate-jwt", "--grace", "600"))
    assert again["previous"] == rotated["kid"]
    signing = baychat(data, "keys", "retire-jwt", rotated["kid"])
    assert signing.returncode != 0
    assert "signs new tokens" in signing.stderr


async def test_tenant_delete_needs_the_owner_and_shreds_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    slug, tenant_id = await seed(data, 10)
    key_file = data / "keys" / f"{tenant_id}.key"
    assert key_file.exists()

    unconfirmed = baychat(data, "tenant", "delete", slug, "--confirm", "other", "--owner-stdin")
    assert unconfirmed.returncode != 0
    wrong = baychat(
        data, "tenant", "delete", slug, "--confirm", slug, "--owner-stdin",
        stdin="owner@example.com\nwrong password\n",
    )  # fmt: skip
    assert wrong.returncode != 0
    assert "not confirmed" in wrong.stderr
    assert key_file.exists()

    deleted = ok(
        baychat(
            data, "tenant", "delete", slug, "--confirm", slug, "--owner-stdin",
            stdin=f"owner@example.com\n{PASSWORD}\n",
        )
    )  # fmt: skip
    assert deleted["rows_deleted"]["messages"] == 10
    assert not key_file.exists()
    assert (await audit_actions(data, tenant_id))[-1] == "tenant.delete"
    assert ok(baychat(data, "keys", "status"))["master_keys"]["versions"]["1"]["messages"] == 0
    gone = baychat(data, "tenant", "delete", slug, "--confirm", slug, "--owner-stdin", stdin="\n\n")
    assert gone.returncode != 0


def test_prune_refuses_a_zero_retention(tmp_path: Path) -> None:
    refused = baychat(tmp_path / "data", "backup", "prune", "--keep-days", "0")
    assert refused.returncode != 0
    assert ok(baychat(tmp_path / "data", "backup", "prune"))["keep_days"] == 35
