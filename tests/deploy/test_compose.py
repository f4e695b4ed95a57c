"""docker-compose.yml, proven without a Docker engine: Compose itself validates it (Debian's
docker-compose, or the docker compose plugin where present), and its invariants are
checked on the file as Compose resolves it with .env.example: only Caddy publishes ports,
every service has a health check, the private networks have no route out, Redis keeps an
append-only file, each secret reaches only the services that need it."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.backends import unavailable
from tests.deploy.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    MissingVariable,
    environment,
    load_compose,
    networks,
    read_env_file,
    referenced_variables,
    required_variables,
)

GATEWAYS = ("gateway-1", "gateway-2")
APP_SERVICES = (*GATEWAYS, "worker")


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def services(example_env: dict[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load_compose(example_env)["services"]
    return found


@pytest.fixture(scope="module")
def compose(example_env: dict[str, str]) -> dict[str, Any]:
    return load_compose(example_env)


# -- Compose's own verdict ----------------------------------------------------------------


def _compose_command() -> list[str]:
    if shutil.which("docker") is not None:
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    unavailable("docker compose / docker-compose", "apt-get install docker-compose")
    raise AssertionError("unreachable")


def _compose_config(env_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # --project-directory elsewhere: a developer's own .env must not leak into the check.
    return subprocess.run(
        [
            *_compose_command(),
            "--project-directory",
            str(tmp_path),
            "--env-file",
            str(env_file),
            "--file",
            str(COMPOSE_FILE),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_validates_the_file_with_the_example_env(tmp_path: Path) -> None:
    result = _compose_config(ENV_EXAMPLE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "gateway-2:" in result.stdout


def test_compose_refuses_to_start_without_a_required_secret(tmp_path: Path) -> None:
    lines = [
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if not line.startswith("BAYCHAT_DB_APP_PASSWORD=")
    ]
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(lines) + "\n")
    result = _compose_config(partial, tmp_path)
    assert result.returncode != 0
    assert "REQUIRED in .env" in result.stderr


# -- invariants -----------------------------------------------------------------------------


def test_only_caddy_publishes_ports_and_only_80_and_443(
    services: dict[str, dict[str, Any]],
) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"caddy"}
    assert sorted(services["caddy"]["ports"]) == ["443:443", "80:80"]
    for name, service in services.items():
        # Host networking would bypass all this; "none" (no network at all) is stricter still.
        assert service.get("network_mode", "none") == "none", name


def test_every_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            # Only a one-shot job may go without: others wait for it to complete instead.
            assert service.get("restart") == "no", name
            continue
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert {"interval", "timeout", "retries"} <= check.keys(), name


def test_backend_and_edge_networks_have_no_route_out(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    defined = compose["networks"]
    assert defined["backend"]["internal"] is True
    assert defined["edge"]["internal"] is True
    assert not (defined["public"] or {}).get("internal")
    assert networks(services["caddy"]) == {"public", "edge"}
    for name in GATEWAYS:
        assert networks(services[name]) == {"edge", "backend"}
    for name in ("worker", "migrate", "postgres", "redis", "backup"):
        assert networks(services[name]) == {"backend"}, name
    # The key-store backup reads files and writes files: it needs no network at all.
    assert services["keystore-backup"]["network_mode"] == "none"
    assert networks(services["keystore-backup"]) == set()


def test_redis_keeps_an_append_only_file_and_never_evicts(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in {"always", "everysec"}
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_redis_defaults_to_fsync_always() -> None:
    services = load_compose(
        {k: v for k, v in read_env_file(ENV_EXAMPLE).items() if k != "BAYCHAT_REDIS_APPENDFSYNC"}
    )["services"]
    command = services["redis"]["command"]
    assert command[command.index("--appendfsync") + 1] == "always"


def test_migrate_runs_once_as_owner_before_gateways_and_worker(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert "BAYCHAT_DATABASE_OWNER_URL" in environment(migrate)
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in GATEWAYS:
        assert services["caddy"]["depends_on"][name]["condition"] == "service_healthy"


def test_gateways_and_worker_run_as_cluster_nodes(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["BAYCHAT_EMBEDDED_WORKER"] == "0", name
        assert env["BAYCHAT_MIGRATE_ON_START"] == "0", name
        assert env["BAYCHAT_DATABASE_URL"].startswith("postgresql://baychat_app:"), name
        assert env["BAYCHAT_BROKER_URL"].startswith("redis://"), name
        assert "BAYCHAT_DATABASE_OWNER_URL" not in env, name
    assert services["worker"]["command"][0] == "worker"
    # The worker serves its health on a port of its own, and its healthcheck asks it.
    assert services["worker"]["command"][1:] == ["--http-host", "0.0.0.0", "--http-port", "9100"]  # noqa: S104
    assert "127.0.0.1:9100/healthz" in " ".join(services["worker"]["healthcheck"]["test"])
    for name in GATEWAYS:
        assert services[name]["command"][0] == "serve"
        origins = environment(services[name])["BAYCHAT_ALLOWED_ORIGINS"]
        assert origins == "https://chat.example.com"  # the site, from .env.example


def test_each_secret_reaches_only_the_services_that_need_it(
    example_env: dict[str, str],
) -> None:
    needs = {
        "BAYCHAT_POSTGRES_PASSWORD": {"postgres"},
        "BAYCHAT_DB_OWNER_PASSWORD": {"postgres", "migrate"},
        "BAYCHAT_DB_APP_PASSWORD": {"postgres", "migrate", *APP_SERVICES},
        "BAYCHAT_REDIS_PASSWORD": {"redis", *APP_SERVICES},
        "BAYCHAT_MASTER_KEYS": set(APP_SERVICES),
        "BAYCHAT_JWT_KEYS": set(APP_SERVICES),
        "BAYCHAT_DB_BACKUP_PASSWORD": {"postgres", "backup"},
        "BAYCHAT_BACKUP_KEY": {"backup", "keystore-backup"},
    }
    marked = {**example_env, **{secret: f"<{secret}>" for secret in needs}}
    services = load_compose(marked)["services"]
    for secret, allowed in needs.items():
        holders = {name for name, service in services.items() if f"<{secret}>" in repr(service)}
        assert holders == allowed, secret


def test_tenant_keys_volume_is_shared_by_gateways_and_worker(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert "tenant-keys" in compose["volumes"]
    for name in APP_SERVICES:
        keystore = environment(services[name])["BAYCHAT_KEYSTORE_DIR"]
        assert f"tenant-keys:{keystore}" in services[name]["volumes"], name
    for name in ("caddy", "postgres", "redis", "migrate", "backup"):
        mounts = services[name].get("volumes") or []
        assert not any(m.startswith("tenant-keys:") for m in mounts), name
    # The key-store backup reads it and cannot change it.
    keystore = environment(services["keystore-backup"])["BAYCHAT_KEYSTORE_DIR"]
    assert f"tenant-keys:{keystore}:ro" in services["keystore-backup"]["volumes"]


def volume_holders(services: dict[str, dict[str, Any]], volume: str) -> set[str]:
    return {
        name
        for name, service in services.items()
        if any(v.split(":", 1)[0] == volume for v in service.get("volumes") or [])
    }


def test_backups_run_on_a_schedule_and_prune(services: dict[str, dict[str, Any]]) -> None:
    backup = services["backup"]
    [script] = backup["command"]
    assert "baychat backup && baychat backup prune" in script
    assert "sleep 3600" in script  # BAYCHAT_BACKUP_INTERVAL_S from .env.example
    env = environment(backup)
    assert env["BAYCHAT_BACKUP_DATABASE_URL"].startswith("postgresql://baychat_backup:")
    assert env["BAYCHAT_BACKUP_KEEP_DAYS"] == "35"
    assert f"backups:{env['BAYCHAT_BACKUP_DIR']}" in backup["volumes"]
    assert ":" not in env["BAYCHAT_DATABASE_URL"].split("@")[0].removeprefix("postgresql://")
    assert volume_holders(services, "backups") == {"backup"}


def test_key_store_backups_run_on_their_own_schedule_and_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    service = services["keystore-backup"]
    [script] = service["command"]
    assert "baychat keys backup && baychat keys backup prune" in script
    assert "sleep 3600" in script  # BAYCHAT_KEYSTORE_BACKUP_INTERVAL_S from .env.example
    env = environment(service)
    assert env["BAYCHAT_KEYSTORE_BACKUP_KEEP_DAYS"] == "35"
    assert f"keystore-backups:{env['BAYCHAT_KEYSTORE_BACKUP_DIR']}" in service["volumes"]
    assert "keystore-backups" in compose["volumes"]
    # Apart from the database backups, both ways: neither service holds the other's volume.
    assert volume_holders(services, "keystore-backups") == {"keystore-backup"}
    assert (
        env["BAYCHAT_KEYSTORE_BACKUP_DIR"] != environment(services["backup"])["BAYCHAT_BACKUP_DIR"]
    )
    # A key-store backup needs no database: no URL, no password, no master key.
    assert not {k for k in env if "DATABASE" in k or k == "BAYCHAT_MASTER_KEYS"}
    # Its health check watches its own files.
    assert "baychat-keys-*.bckeys" in service["healthcheck"]["test"][1]
    # The image creates the mount point, so a fresh volume is the application user's.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert env["BAYCHAT_KEYSTORE_BACKUP_DIR"] in dockerfile


def test_gateways_trust_forwarded_headers_from_caddy_only(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    caddy_ip = services["caddy"]["networks"]["edge"]["ipv4_address"]
    [subnet] = compose["networks"]["edge"]["ipam"]["config"]
    assert ipaddress.ip_address(caddy_ip) in ipaddress.ip_network(subnet["subnet"])
    for name in GATEWAYS:
        assert environment(services[name])["BAYCHAT_TRUSTED_PROXIES"] == caddy_ip


def test_caddy_proxies_to_every_gateway_on_its_port(
    services: dict[str, dict[str, Any]],
) -> None:
    caddy = services["caddy"]
    upstreams = environment(caddy)["BAYCHAT_UPSTREAMS"].split()
    expected = []
    for name in GATEWAYS:
        command = services[name]["command"]
        expected.append(f"{name}:{command[command.index('--port') + 1]}")
    assert upstreams == expected
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]


def test_postgres_creates_both_roles_on_first_start(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    mount = next(v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v)
    source = REPO / mount.split(":", 1)[0]
    assert source.is_file()
    assert source.stat().st_mode & 0o111, "the entrypoint sources non-executable scripts"
    env = environment(postgres)
    for name in ("BAYCHAT_DB_OWNER", "BAYCHAT_DB_APP", "BAYCHAT_DB_NAME"):
        assert name in env


def test_configuration_comes_from_the_env_file(example_env: dict[str, str]) -> None:
    lines = COMPOSE_FILE.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = referenced_variables(text)
    documented = set(example_env)
    assert used - documented == set(), "document these in .env.example"
    assert documented - used == {"COMPOSE_PROJECT_NAME"}, "unused in docker-compose.yml"
    for secret in ("BAYCHAT_POSTGRES_PASSWORD", "BAYCHAT_MASTER_KEYS", "BAYCHAT_JWT_KEYS"):
        assert secret in required_variables(text)
    with pytest.raises(MissingVariable, match="BAYCHAT_MASTER_KEYS"):
        load_compose({k: v for k, v in example_env.items() if k != "BAYCHAT_MASTER_KEYS"})
    assert ".env\n" in (REPO / ".gitignore").read_text()
