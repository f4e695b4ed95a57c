"""The restore drill, end to end: back up a running server, destroy its database, restore
with the command line, verify, and keep chatting on the restored server: the next message
gets the next seq, with no gap and no reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def baychat(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BAYCHAT_DATA_DIR": str(data_dir)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_backup_destroy_restore_verify_and_keep_chatting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
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
        made = baychat(settings.data_dir, "backup")
        assert made.returncode == 0, made.stderr
        backup = Path(json.loads(made.stdout)["file"])

    for leftover in settings.data_dir.glob("baychat.db*"):
        leftover.unlink()  # the disaster

    restored = baychat(settings.data_dir, "restore", str(backup))
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

    again = baychat(settings.data_dir, "restore", str(backup))
    assert again.returncode != 0
    assert "not empty" in again.stderr
