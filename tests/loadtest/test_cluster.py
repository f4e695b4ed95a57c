"""The load generator against the cluster form: a gateway and a persistence worker as
their own processes, sharing Postgres and Redis. Every acked message reaches every
subscriber once, and the server's figures are read from its /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
from pathlib import Path

import pytest

from loadtest.cli import main
from server.auth.tokens import SigningKeys
from tests.backends import fresh_postgres, shared_redis_url
from tests.loadtest.conftest import QUICK, UNLIMITED
from tests.processes import Processes, baychat_command


def _cluster_env(tmp_path: Path, app_url: str, owner_url: str, broker_url: str) -> dict[str, str]:
    env = {
        "BAYCHAT_DATA_DIR": str(tmp_path / "data"),
        "BAYCHAT_KEYSTORE_DIR": str(tmp_path / "keys"),
        "BAYCHAT_DATABASE_URL": app_url,
        "BAYCHAT_DATABASE_OWNER_URL": owner_url,
        "BAYCHAT_BROKER_URL": broker_url,
        "BAYCHAT_EMBEDDED_WORKER": "0",
        "BAYCHAT_MIGRATE_ON_START": "0",
        "BAYCHAT_MASTER_KEYS": "1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "BAYCHAT_JWT_KEYS": SigningKeys.generate().to_json().decode(),
        "BAYCHAT_LOG_LEVEL": "warning",
    }
    env.update({f"BAYCHAT_{name.upper()}": str(value) for name, value in UNLIMITED.items()})
    return env


async def test_fanout_against_a_gateway_and_a_worker_of_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_url = await shared_redis_url()
    async with fresh_postgres() as db:
        broker_url = f"{redis_url}?namespace=lt{secrets.token_hex(4)}"
        env = _cluster_env(tmp_path, db.app_url, db.owner_url, broker_url)
        # The generator provisions its accounts with the `baychat` CLI, which reads the
        # same environment as the servers.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        migrated = await asyncio.to_thread(
            subprocess.run, [*baychat_command(), "migrate"], capture_output=True, check=False
        )
        assert migrated.returncode == 0, migrated.stderr
        async with Processes(tmp_path / "logs") as procs:
            procs.worker("worker", env)
            gateway = procs.gateway("gateway", env)
            await gateway.wait_ready()
            out = tmp_path / "out"
            argv = [
                "fanout",
                "--target",
                gateway.http_url,
                "--credentials",
                str(tmp_path / "credentials.json"),
                "--users",
                "2",
                "--out",
                str(out),
                "--subscribers",
                "4",
                "--rate",
                "20",
                *QUICK,
            ]
            code = await asyncio.to_thread(main.main, argv, standalone_mode=False)
    assert code in (0, None)
    run = json.loads((out / "result.json").read_text())["runs"][0]
    messages = run["messages"]
    assert messages["acked"] > 0
    assert messages["delivered"] == messages["expected"] == messages["acked"] * 4
    assert (messages["lost"], messages["duplicated"]) == (0, 0)
    assert run["server"]["available"] is True
    assert run["server"]["deliveries"] > 0
