"""scripts/floor_server.py speaks what the load generator sends, so its figures are a floor
for the same scenarios (docs/BENCHMARKS.md, "The floor")."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import main
from tests.backends import free_port
from tests.loadtest.conftest import QUICK, assert_every_acked_message_once, assert_well_formed

FLOOR = Path(__file__).resolve().parents[2] / "scripts" / "floor_server.py"


@pytest.fixture
def floor() -> Iterator[tuple[str, int]]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(FLOOR), "--port", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(10)


def _run(target: str, pid: int, tmp_path: Path, scenario: str, *args: str) -> dict[str, Any]:
    credentials = tmp_path / "credentials.json"
    users = [{"email": f"u{i}@floor.example", "password": "any"} for i in range(2)]
    credentials.write_text(json.dumps({"tenant": "floor", "users": users}))
    out = tmp_path / scenario
    argv = [scenario, "--target", target, "--credentials", str(credentials)]
    argv += ["--out", str(out), "--server-pid", str(pid), *QUICK, *args]
    assert main.main(argv, standalone_mode=False) in (0, None)
    doc: dict[str, Any] = json.loads((out / "result.json").read_text())
    return assert_well_formed(doc, scenario)


def test_fanout_against_the_floor_delivers_every_message_once(
    floor: tuple[str, int], tmp_path: Path
) -> None:
    run = _run(*floor, tmp_path, "fanout", "--subscribers", "20", "--rate", "50")
    assert_every_acked_message_once(run, subscribers=20, per_channel=20)
    # Read from /proc (--server-pid): ticks of 10 ms, so a short run may show none.
    assert run["server"]["cpu_us_per_delivery"] is not None


def test_storm_against_the_floor_connects_every_time(
    floor: tuple[str, int], tmp_path: Path
) -> None:
    run = _run(*floor, tmp_path, "storm", "--rate", "40")
    assert run["connections"]["failed"] == 0
    assert run["errors"] == {}
    assert run["connect_latency_ms"]["count"] > 0
    assert run["server"]["cpu_us_per_connect"] is not None
