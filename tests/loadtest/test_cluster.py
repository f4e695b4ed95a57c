"""The load generator against the cluster form: a gateway and a persistence worker as
their own processes, sharing Postgres and Redis. Every scenario runs against one such
cluster, short and small, and is judged as against the embedded server: every acked
message reaches every subscriber once, the server's figures are read from its /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from loadtest.cli import main
from server.auth.tokens import SigningKeys
from tests.backends import fresh_postgres, shared_redis_url
from tests.loadtest.conftest import (
    QUICK,
    UNLIMITED,
    assert_every_acked_message_once,
    assert_well_formed,
)
from tests.processes import Processes, baychat_command

pytestmark = pytest.mark.asyncio(loop_scope="module")

RunOnCluster = Callable[..., Awaitable[dict[str, Any]]]


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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run_on_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunOnCluster]:
    """A gateway and a worker over a fresh Postgres database and the shared Redis (its own
    namespace); runs a scenario against the gateway and returns its result document. The
    generator provisions its accounts (once, on the first run) with the `baychat` CLI,
    which reads the same environment as the servers."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    redis_url = await shared_redis_url()
    async with fresh_postgres() as db:
        broker_url = f"{redis_url}?namespace=lt{secrets.token_hex(4)}"
        env = _cluster_env(tmp_path, db.app_url, db.owner_url, broker_url)
        with pytest.MonkeyPatch.context() as monkeypatch:
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

                async def run(scenario: str, *args: str) -> dict[str, Any]:
                    out = tmp_path / f"out-{scenario}"
                    argv = [
                        scenario,
                        "--target",
                        gateway.http_url,
                        "--credentials",
                        str(tmp_path / "credentials.json"),
                        "--users",
                        "2",
                        "--out",
                        str(out),
                        *QUICK,
                        *args,
                    ]
                    code = await asyncio.to_thread(main.main, argv, standalone_mode=False)
                    assert code in (0, None)
                    doc: dict[str, Any] = json.loads((out / "result.json").read_text())
                    return doc

                yield run


async def test_fanout_against_a_gateway_and_a_worker_of_a_cluster(
    run_on_cluster: RunOnCluster,
) -> None:
    run = assert_well_formed(
        await run_on_cluster("fanout", "--subscribers", "4", "--rate", "20"), "fanout"
    )
    assert_every_acked_message_once(run, subscribers=4, per_channel=4)
    assert run["server"]["deliveries"] > 0


async def test_rooms_on_a_cluster(run_on_cluster: RunOnCluster) -> None:
    doc = await run_on_cluster("rooms", "--rooms", "2", "--members", "3", "--rate", "5")
    run = assert_well_formed(doc, "rooms")
    assert_every_acked_message_once(run, subscribers=6, per_channel=3)


async def test_persist_on_a_cluster_acks_every_publish(run_on_cluster: RunOnCluster) -> None:
    doc = await run_on_cluster("persist", "--publishers", "3", "--rate", "30")
    run = assert_well_formed(doc, "persist")
    messages = run["messages"]
    assert messages["published"] > 0
    assert messages["acked"] == messages["published"]  # acked = stored by the worker
    assert run["ack_latency_ms"]["count"] > 0  # those acked in the measured window
    assert run["throughput"]["acks_per_s"] > 0


async def test_storm_on_a_cluster(run_on_cluster: RunOnCluster) -> None:
    run = assert_well_formed(await run_on_cluster("storm", "--rate", "40"), "storm")
    assert run["connections"]["failed"] == 0
    assert run["errors"] == {}
    assert run["throughput"]["connects_per_s"] > 0
    assert run["server"]["cpu_us_per_connect"] > 0


async def test_idle_on_a_cluster(run_on_cluster: RunOnCluster) -> None:
    [run] = (await run_on_cluster("idle", "--steps", "5,15", "--processes", "2"))["runs"]
    assert [level["connected"] for level in run["levels"]] == [5, 15]
    assert all(level["server_rss_mib"] > 0 for level in run["levels"])
    assert run["connections"]["failed"] == 0


async def test_agents_on_a_cluster(run_on_cluster: RunOnCluster) -> None:
    doc = await run_on_cluster(
        "agents", "--channels", "2", "--humans", "2", "--agents", "2", "--rate", "10"
    )
    run = assert_well_formed(doc, "agents")
    assert_every_acked_message_once(run, subscribers=4, per_channel=2)
    assert run["by_kind"]["agent"]["delivered"] > 0
    assert run["by_kind"]["user"]["delivered"] > 0
