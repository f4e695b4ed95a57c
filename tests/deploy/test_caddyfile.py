"""The Caddyfile, proven without Docker: Caddy validates and adapts it, and a real Caddy
running it terminates TLS (1.3 preferred, 1.2 minimum), redirects HTTP, sets the security
headers over whatever the upstream sends, and replaces a client's X-Forwarded-For."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.middleware import SECURITY_HEADERS
from tests.deploy.caddy import CADDYFILE, Edge, caddy_binary, edge_env, handshake, running_edge

PUBLIC = {"BAYCHAT_SITE_ADDRESS": "chat.example.com", "BAYCHAT_TLS_ISSUER": "acme"}


def _caddy(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [caddy_binary(), *args, "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = edge_env(tmp_path, ["gw-a:8000", "gw-b:8000"], 8443, 8080, 2999)
    env.update(overrides)
    return env


@pytest.fixture(params=["internal", "public"])
def mode_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return _env(tmp_path, **(PUBLIC if request.param == "public" else {}))


def test_caddy_validates_the_caddyfile(mode_env: dict[str, str]) -> None:
    result = _caddy(["validate"], mode_env)
    assert result.returncode == 0, result.stderr
    assert "Valid configuration" in result.stdout + result.stderr


def test_caddyfile_is_formatted() -> None:
    result = subprocess.run(
        [caddy_binary(), "fmt", str(CADDYFILE)], capture_output=True, text=True, check=True
    )
    assert result.stdout == CADDYFILE.read_text(), "run `caddy fmt --overwrite Caddyfile`"


def _adapted(env: dict[str, str]) -> dict[str, Any]:
    result = _caddy(["adapt"], env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _handlers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [server] = config["apps"]["http"]["servers"].values()
    [route] = server["routes"]
    [subroute] = route["handle"]
    return {h["handler"]: h for r in subroute["routes"] for h in r["handle"]}


def test_adapted_config_has_tls_policy_headers_and_balancing(mode_env: dict[str, str]) -> None:
    config = _adapted(mode_env)
    [server] = config["apps"]["http"]["servers"].values()
    site = mode_env["BAYCHAT_SITE_ADDRESS"]
    assert server["listen"] == [f"127.0.0.1:{mode_env['BAYCHAT_HTTPS_PORT']}"]
    assert server["routes"][0]["match"] == [{"host": [site]}]
    named = [p for p in server["tls_connection_policies"] if p.get("match")]
    assert named == [{"match": {"sni": [site]}, "protocol_min": "tls1.2", "protocol_max": "tls1.3"}]
    [policy] = config["apps"]["tls"]["automation"]["policies"]
    [issuer] = policy["issuers"]
    assert issuer["module"] == mode_env["BAYCHAT_TLS_ISSUER"]

    handlers = _handlers(config)
    headers = handlers["headers"]["response"]
    assert headers["deferred"] is True  # replaces upstream values instead of adding to them
    assert set(headers["delete"]) >= {"Server"}
    assert headers["set"]["X-Frame-Options"] == ["DENY"]
    assert headers["set"]["X-Content-Type-Options"] == ["nosniff"]
    assert headers["set"]["Strict-Transport-Security"][0].startswith("max-age=63072000")

    proxy = handlers["reverse_proxy"]
    assert [u["dial"] for u in proxy["upstreams"]] == ["gw-a:8000", "gw-b:8000"]
    assert proxy["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
    assert proxy["health_checks"]["active"]["uri"] == "/readyz"


def test_edge_headers_agree_with_the_gateways_own(tmp_path: Path) -> None:
    # One policy, two layers: the edge must not weaken (or contradict) what the app sends.
    edge = _handlers(_adapted(_env(tmp_path)))["headers"]["response"]["set"]
    for name, value in SECURITY_HEADERS.items():
        assert edge.get(name) == [value], name


def test_defaults_are_the_compose_deployment(tmp_path: Path) -> None:
    env = _env(tmp_path, **PUBLIC)
    for name in ("BAYCHAT_UPSTREAMS", "BAYCHAT_BIND", "BAYCHAT_HTTPS_PORT", "BAYCHAT_HTTP_PORT"):
        del env[name]
    config = _adapted(env)
    [server] = config["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"]  # every interface
    assert config["apps"]["http"]["http_port"] == 80
    proxy = _handlers(config)["reverse_proxy"]
    assert [u["dial"] for u in proxy["upstreams"]] == ["gateway-1:8000", "gateway-2:8000"]


# -- a live Caddy in front of an upstream that echoes what it was sent ---------------------


async def _echo(request: Request) -> Response:
    return JSONResponse(
        dict(request.headers),
        headers={"X-Frame-Options": "SAMEORIGIN", "X-Powered-By": "echo"},
    )


async def _ok(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@contextlib.asynccontextmanager
async def _echo_upstream() -> AsyncIterator[str]:
    app = Starlette(
        routes=[
            Route("/readyz", _ok),
            Route("/healthz", _ok),
            Route("/echo", _echo),
            Route("/metrics", _ok),
        ]
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    async with _echo_upstream() as upstream:
        with running_edge([upstream], tmp_path / "caddy") as running:
            yield running


async def test_https_response_carries_the_security_headers(edge: Edge) -> None:
    async with edge.http() as http:
        response = await http.get("/echo")
    assert response.status_code == 200
    headers = response.headers
    assert headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    csp = headers["content-security-policy"]
    for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in csp
    # The upstream said SAMEORIGIN; the edge's DENY replaces it rather than sitting beside it.
    assert headers.get_list("x-frame-options") == ["DENY"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert "camera=()" in headers["permissions-policy"]
    assert "server" not in headers
    assert "x-powered-by" not in headers


async def test_metrics_are_not_served_to_the_internet(edge: Edge) -> None:
    async with edge.http() as http:
        metrics = await http.get("/metrics")
        echo = await http.get("/echo")
    assert metrics.status_code == 404
    assert echo.status_code == 200  # everything else still reaches the gateways


async def test_forwarded_headers_are_set_by_caddy_not_the_client(edge: Edge) -> None:
    async with edge.http() as http:
        response = await http.get(
            "/echo",
            headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http"},
        )
    seen = response.json()
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == f"localhost:{edge.https_port}"


async def test_plain_http_redirects_to_https(edge: Edge) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{edge.http_url}/echo?x=1")
    assert response.status_code == 308
    # Caddy 2.6 leaves the port out when the site has none (in production it is 443).
    assert response.headers["location"] in {
        "https://localhost/echo?x=1",
        f"{edge.https_url}/echo?x=1",
    }


def _pinned(version: ssl.TLSVersion, edge: Edge) -> ssl.SSLContext:
    context = edge.ssl_context()
    context.minimum_version = context.maximum_version = version
    return context


@contextlib.contextmanager
def _tls(edge: Edge, context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    sock = handshake(edge, context)
    try:
        yield sock
    finally:
        sock.close()


def test_tls13_is_negotiated_by_default(edge: Edge) -> None:
    with _tls(edge, edge.ssl_context()) as sock:
        assert sock.version() == "TLSv1.3"


def test_tls12_is_still_accepted_for_legacy_clients(edge: Edge) -> None:
    with _tls(edge, _pinned(ssl.TLSVersion.TLSv1_2, edge)) as sock:
        assert sock.version() == "TLSv1.2"
        cipher, _, _ = sock.cipher()
        assert "GCM" in cipher or "CHACHA20" in cipher


def test_tls11_is_refused_by_the_server(edge: Edge) -> None:
    with warnings.catch_warnings():  # deprecated, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context = _pinned(ssl.TLSVersion.TLSv1_1, edge)
    # OpenSSL 3 will only offer TLS 1.1 at security level 0; with it the refusal comes
    # from the server (a protocol_version alert), not from our own client.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:
        handshake(edge, context).close()
    assert "PROTOCOL_VERSION" in str(refused.value).upper().replace(" ", "_")


async def test_admin_endpoint_answers_the_compose_health_check(edge: Edge) -> None:
    # docker-compose.yml's caddy health check: GET /config/ on the loopback admin address.
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"http://127.0.0.1:{edge.admin_port}/config/")
    assert response.status_code == 200
    assert response.json()["apps"]["http"]["servers"]


def test_tls12_without_forward_secret_aead_suites_is_refused(edge: Edge) -> None:
    context = _pinned(ssl.TLSVersion.TLSv1_2, edge)
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError) as refused:
        handshake(edge, context).close()
    assert "HANDSHAKE_FAILURE" in str(refused.value).upper()
