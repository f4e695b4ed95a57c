"""Accounts to load-test with: created through the ``baychat`` CLI of a local server, or
read from a file for a remote one; logged in, channels and agents made, over the HTTP API.

The file (``{"tenant": SLUG, "users": [{"email", "password"}, ...]}``, the first user a
tenant owner) is written with mode 0600 and reused by later runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx


class Unsupported(Exception):
    """The server lacks an API a scenario needs (e.g. agents on an older server)."""


@dataclass(frozen=True, slots=True)
class Account:
    email: str
    password: str


@dataclass(frozen=True, slots=True)
class Credentials:
    tenant: str
    users: tuple[Account, ...]

    @property
    def owner(self) -> Account:
        return self.users[0]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"tenant": self.tenant, "users": [asdict(u) for u in self.users]}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        doc = json.loads(path.read_text())
        users = tuple(Account(u["email"], u["password"]) for u in doc["users"])
        if not users:
            raise ValueError(f"{path}: no users")
        return cls(str(doc["tenant"]), users)


def baychat_command() -> list[str]:
    """The ``baychat`` CLI of this installation (next to this Python), else on PATH."""
    beside = Path(sys.executable).with_name("baychat")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("baychat")
    if found is None:
        raise FileNotFoundError("the baychat command is not installed")
    return [found]


def provision_local(users: int, command: Sequence[str] | None = None) -> Credentials:
    """Create a tenant and ``users`` users with the CLI of the local server. The CLI must
    see the server's configuration (the same ``BAYCHAT_*`` environment)."""
    cli = list(command or baychat_command())
    slug = f"lt-{secrets.token_hex(4)}"
    _run([*cli, "tenant", "create", slug, "--plan", "paid"])
    accounts = []
    for i in range(max(users, 1)):
        account = Account(f"load-{i}@{slug}.example.com", secrets.token_urlsafe(18))
        role = "owner" if i == 0 else "member"
        _run(
            [*cli, "user", "create", slug, account.email, "--role", role, "--password-stdin"],
            stdin=account.password + "\n",
        )
        accounts.append(account)
    return Credentials(slug, tuple(accounts))


def _run(argv: list[str], stdin: str = "") -> dict[str, Any]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} failed: {done.stderr.strip()[-500:]}")
    doc: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc


class Api:
    """The HTTP API calls the load generator needs, with one client."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def login(self, tenant: str, account: Account) -> str:
        response = self.http.post(
            "/api/v1/auth/login",
            json={"tenant": tenant, "email": account.email, "password": account.password},
        )
        if response.status_code != 200:
            raise RuntimeError(f"login failed ({response.status_code}): {response.text[:200]}")
        token: str = response.json()["access_token"]
        return token

    def ensure_channel(self, token: str, name: str) -> None:
        response = self.http.post("/api/v1/channels", json={"name": name}, headers=_bearer(token))
        if response.status_code not in (200, 201, 409):
            raise RuntimeError(f"channel {name}: {response.status_code} {response.text[:200]}")

    def create_agent(self, token: str, name: str) -> str:
        response = self.http.post("/api/v1/agents", json={"name": name}, headers=_bearer(token))
        if response.status_code in (404, 405):
            raise Unsupported("this server has no agents API (POST /api/v1/agents)")
        if response.status_code not in (200, 201):
            raise RuntimeError(f"create agent: {response.status_code} {response.text[:200]}")
        agent_id: str = response.json()["id"]
        return agent_id

    def create_agent_token(self, token: str, agent_id: str, scopes: list[dict[str, Any]]) -> str:
        response = self.http.post(
            f"/api/v1/agents/{agent_id}/tokens",
            json={"scopes": scopes, "expires_in": 3600},
            headers=_bearer(token),
        )
        if response.status_code in (404, 405):
            raise Unsupported("this server has no agent tokens API")
        if response.status_code not in (200, 201):
            raise RuntimeError(f"agent token: {response.status_code} {response.text[:200]}")
        plain: str = response.json()["token"]
        return plain


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
