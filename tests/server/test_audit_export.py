"""The audit log from outside: export (paid plan, owners and admins, streamed, verifiable
offline) and `baychat audit verify`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.backends import on_every_store
from tests.harness import LiveServer
from tests.identity import admin, agent_token, audit_actions, bearer

CLI = [sys.executable, "-m", "server.cli"]
HASHED = (
    "seq",
    "id",
    "tenant_id",
    "at",
    "actor_kind",
    "actor_id",
    "action",
    "target",
    "ip",
    "result",
    "detail",
    "prev_hash",
)


def verify_offline(entries: list[dict[str, Any]]) -> None:
    """What a customer does with an export: recompute every hash, follow every link."""
    prev = "0" * 64
    for seq, entry in enumerate(entries, start=1):
        assert entry["seq"] == seq
        canonical = json.dumps({k: entry[k] for k in HASHED}, sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(canonical.encode()).hexdigest() == entry["hash"]
        assert entry["prev_hash"] == prev
        prev = entry["hash"]


@on_every_store
async def test_a_paid_tenant_exports_a_chain_it_can_verify(server: LiveServer) -> None:
    tenant = await server.tenant(plan="paid")
    boss = await admin(server, tenant)
    await agent_token(server, boss, scopes=[{"channel": "ops-*", "actions": ["write"]}])
    async with server.http() as http:
        response = await http.get("/api/v1/audit/export?format=jsonl", headers=boss.headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        entries = [json.loads(line) for line in response.text.splitlines()]
        as_csv = await http.get("/api/v1/audit/export?format=csv", headers=boss.headers)
    verify_offline(entries)
    assert [e["action"] for e in entries] == [
        "tenant.create",
        "user.create",
        "agent.create",
        "agent.token_create",
        "audit.export",
    ]
    created = entries[3]
    assert created["detail"]["scopes"] == [{"channel": "ops-*", "actions": ["write"]}]
    assert (created["actor_kind"], created["actor_id"]) == ("user", boss.user.id)
    assert created["ip"] == "127.0.0.1"
    assert created["time"].endswith("+00:00")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["hash"] for r in rows[:-1]] == [e["hash"] for e in entries]
    assert rows[-1]["action"] == "audit.export"
    assert json.loads(rows[3]["detail"]) == created["detail"]


@on_every_store
async def test_export_is_for_paid_plans_owners_and_admins(server: LiveServer) -> None:
    free = await server.tenant()
    paid = await server.tenant(plan="paid")
    free_admin = await admin(server, free)
    member = await admin(server, paid, role="member")
    issued = await agent_token(server, await admin(server, paid))
    async with server.http() as http:
        on_free = await http.get("/api/v1/audit/export", headers=free_admin.headers)
        by_member = await http.get("/api/v1/audit/export", headers=member.headers)
        by_agent = await http.get("/api/v1/audit/export", headers=bearer(issued.token))
        bad_format = await http.get("/api/v1/audit/export?format=xml", headers=free_admin.headers)
    assert on_free.status_code == 403
    assert "paid plan" in on_free.json()["error"]["message"]
    assert (by_member.status_code, by_agent.status_code) == (403, 403)
    assert bad_format.status_code == 422
    assert (await audit_actions(server, free))[-1] == (
        "audit.export",
        f"tenant:{free.id}",
        "denied",
    )


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BAYCHAT_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True)


def test_audit_verify_names_the_first_tampered_entry(tmp_path: Path) -> None:
    for slug in ("acme", "globex"):
        assert _cli(tmp_path, "tenant", "create", slug).returncode == 0
    clean = _cli(tmp_path, "audit", "verify")
    assert clean.returncode == 0, clean.stderr
    reports = [json.loads(line) for line in clean.stdout.splitlines()]
    assert [(r["tenant"], r["ok"], r["entries"]) for r in reports] == [
        ("acme", True, 1),
        ("globex", True, 1),
    ]

    db = sqlite3.connect(tmp_path / "data" / "baychat.db")
    try:
        db.execute("DROP TRIGGER audit_log_no_update")
        db.execute(
            'UPDATE audit_log SET detail = \'{"plan":"paid","slug":"acme"}\''
            " WHERE tenant_id = (SELECT id FROM tenants WHERE slug = 'acme')"
        )
        db.commit()
    finally:
        db.close()
    broken = _cli(tmp_path, "audit", "verify")
    assert broken.returncode == 1
    reports = [json.loads(line) for line in broken.stdout.splitlines()]
    assert [(r["tenant"], r["ok"]) for r in reports] == [("acme", False), ("globex", True)]
    assert reports[0]["problem"]["kind"] == "altered"
    assert reports[0]["problem"]["seq"] == 1
    assert "acme: entry 1" in broken.stderr
    only_globex = _cli(tmp_path, "audit", "verify", "globex")
    assert only_globex.returncode == 0
