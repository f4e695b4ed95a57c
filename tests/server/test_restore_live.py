"""The restore drill, end to end: back up a running server, destroy its database, restore
with the command line, verify, and keep chatting on the restored server: the next message
gets the next seq, with no gap and no reuse. On SQLite and on Postgres."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings
from tests.backends import fresh_postgres, migrated_postgres
from tests.harness import (
    expect,
    expect_messages,
    live_server,
    make_settings,
    publish,
    send,
    subscribe,
)

CLI = [sys.executable, "-m", "server.cli"]


def baychat(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "BAYCHAT_DATA_DIR": str(settings.data_dir),
        "BAYCHAT_DATABASE_URL": settings.database_url,
        "BAYCHAT_DATABASE_OWNER_URL": settings.database_owner_url,
        **env,
    }
    return subprocess.run(
        [*CLI, *args], env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_backup_destroy_restore_verify_and_keep_chatting(engine: str, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        settings = make_settings(tmp_path / "data")
        backup_env: dict[str, str] = {}
        if engine == "postgres":
            db = await stack.enter_async_context(migrated_postgres())
            settings = settings.with_(database_url=db.app_url, database_owner_url=db.owner_url)
            backup_env["BAYCHAT_BACKUP_DATABASE_URL"] = db.admin_url  # a BYPASSRLS role

        async with live_server(settings) as server:
            tenant = await server.tenant()
            alice, bob = await server.user(tenant), await server.user(tenant)
            await server.channel(tenant, "general", alice)
            wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
            await subscribe(wb, "general")
            for i in range(5):
                await publish(wa, "general", f"before the disaster {i}")
            seen = await expect_messages(wb, 5)
            # Taken while the server runs: the online backup is a consistent snapshot.
            made = baychat(settings, "backup", **backup_env)
            assert made.returncode == 0, made.stderr
            backup = Path(json.loads(made.stdout)["file"])

        # The disaster: the database is gone. Restore into a new, empty one.
        restore_args = [str(backup)]
        if engine == "sqlite":
            for leftover in settings.data_dir.glob("baychat.db*"):
                leftover.unlink()
        else:
            new = await stack.enter_async_context(fresh_postgres())
            restore_args += ["--into", new.owner_url, "--app-role", new.app_role]
            settings = settings.with_(database_url=new.app_url, database_owner_url=new.owner_url)
        restored = baychat(settings, "restore", *restore_args)
        assert restored.returncode == 0, restored.stderr
        report = json.loads(restored.stdout)
        assert report["ok"] is True
        assert report["messages_decrypted"] == 5
        assert report["row_counts"]["messages"] == {"expected": 5, "found": 5}

        async with live_server(settings) as server:
            wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
            resumed = await subscribe(wb, "general", since=seen[-1]["seq"])
            assert resumed["recovered"] is True
            ack = await publish(wa, "general", "after the restore")
            [fresh] = await expect_messages(wb, 1)
            assert ack["seq"] == fresh["seq"] == 6
            await send(wb, {"type": "history", "channel": "general", "id": "h"})
            history = await expect(wb, "history", skip=("presence", "typing", "ack"))
            assert sorted(m["seq"] for m in history["messages"]) == [1, 2, 3, 4, 5, 6]
            assert len({m["message_id"] for m in history["messages"]}) == 6

        again = baychat(settings, "restore", *restore_args)
        assert again.returncode != 0
        assert "not empty" in again.stderr
