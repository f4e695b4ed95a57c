"""The command line prints machine-readable JSON for create commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "server.cli"]


def _run(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BAYCHAT_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([*CLI, *args], input=stdin, env=env, capture_output=True, text=True)


def test_tenant_and_user_create_print_json(tmp_path: Path) -> None:
    tenant = json.loads(_run(tmp_path, "tenant", "create", "acme", "--plan", "paid").stdout)
    assert tenant["slug"] == "acme"
    assert tenant["plan"] == "paid"
    assert tenant["id"]
    user = json.loads(
        _run(
            tmp_path,
            "user", "create", "acme", "Ann@Example.com", "--role", "admin", "--password-stdin",
            stdin="a good long password\n",
        ).stdout
    )  # fmt: skip
    assert user == {"id": user["id"], "email": "ann@example.com", "role": "admin"}


def test_errors_are_clear_and_create_nothing(tmp_path: Path) -> None:
    assert _run(tmp_path, "tenant", "create", "acme").returncode == 0
    again = _run(tmp_path, "tenant", "create", "acme")
    assert again.returncode != 0
    assert "exists" in again.stderr
    bad_slug = _run(tmp_path, "tenant", "create", "Not A Slug")
    assert bad_slug.returncode != 0
    short = _run(tmp_path, "user", "create", "acme", "a@b.c", "--password-stdin", stdin="short\n")
    assert short.returncode != 0
    assert "at least" in short.stderr
    assert "short" not in short.stdout


def test_demo_creates_a_tenant_two_users_and_a_channel(tmp_path: Path) -> None:
    done = _run(tmp_path, "demo")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["tenant"] == "demo"
    assert len(doc["users"]) == 2
    assert doc["channel"] == "general"
    assert "ws://" in done.stderr


def test_migrate_reports_applied_versions(tmp_path: Path) -> None:
    env = {**os.environ, "BAYCHAT_DATA_DIR": str(tmp_path / "data"),
           "BAYCHAT_MIGRATE_ON_START": "0"}  # fmt: skip
    first = subprocess.run([*CLI, "migrate"], env=env, capture_output=True, text=True)
    second = subprocess.run([*CLI, "migrate"], env=env, capture_output=True, text=True)
    assert json.loads(first.stdout)["applied"][0] == 1
    assert json.loads(second.stdout) == {"applied": []}
