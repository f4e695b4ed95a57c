"""Security headers on every response (normal, error, 404, 405, 500), request ids, HSTS
behind a trusted proxy only, CORS from the allowlist only, and 500s without internals."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.harness import LiveServer, live_server, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")
APP = "https://app.example.com"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxied(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """A server that trusts 127.0.0.1 as its reverse proxy and allows APP cross-origin."""
    settings = make_settings(
        tmp_path_factory.mktemp("proxied"), trusted_proxies=("127.0.0.1",), cors_origins=(APP,)
    )
    async with live_server(settings) as live:
        yield live


def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    csp = {d.strip() for d in headers["content-security-policy"].split(";")}
    assert {
        "default-src 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    } <= csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert "camera=()" in headers["permissions-policy"]
    assert len(headers["x-request-id"]) >= 16
    assert "server" not in headers


async def test_headers_on_normal_error_404_and_405_responses(module_server: LiveServer) -> None:
    async with module_server.http() as http:
        answers = {
            "ok": await http.get("/healthz"),
            "unauthorized": await http.get("/api/v1/channels"),
            "invalid": await http.post("/api/v1/auth/login", json={}),
            "not found": await http.get("/nowhere"),
            "not found under the API": await http.get("/api/v1/nowhere"),
            "method": await http.put("/api/v1/channels"),
        }
    assert [a.status_code for a in answers.values()] == [200, 401, 422, 404, 404, 405]
    for answer in answers.values():
        assert_security_headers(answer)
        assert answer.headers["cache-control"] == "no-store"
    assert set(answers["method"].headers["allow"].split(", ")) >= {"GET", "POST"}
    assert answers["not found"].json()["error"]["code"] == "not_found"
    assert answers["method"].json()["error"]["code"] == "method_not_allowed"


async def test_authenticated_responses_are_never_stored(module_server: LiveServer) -> None:
    tenant = await module_server.tenant()
    user = await module_server.user(tenant)
    tokens = await module_server.login(tenant, user)
    async with module_server.http() as http:
        answer = await http.get(
            "/api/v1/channels", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    assert_security_headers(answer)


async def test_an_unexpected_exception_is_a_500_with_a_correlation_id_and_no_internals(
    module_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await module_server.tenant()
    user = await module_server.user(tenant)
    tokens = await module_server.login(tenant, user)

    async def explode(*args: object) -> None:
        raise RuntimeError("secret internal detail /srv/baychat/db.py line 42")

    monkeypatch.setattr(module_server.runtime.store.channels, "visible_to", explode)
    async with module_server.http() as http:
        answer = await http.get(
            "/api/v1/channels", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "internal"
    assert error["correlation_id"] == answer.headers["x-request-id"]
    assert "secret" not in answer.text
    assert "RuntimeError" not in answer.text
    assert "Traceback" not in answer.text
    assert_security_headers(answer)


async def test_hsts_only_over_tls(module_server: LiveServer, proxied: LiveServer) -> None:
    async with module_server.http() as http:
        plain = await http.get("/healthz")
        spoofed = await http.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    async with proxied.http() as http:
        behind_tls_proxy = await http.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in plain.headers
    # X-Forwarded-Proto from a peer that is not a trusted proxy means nothing
    assert "strict-transport-security" not in spoofed.headers
    hsts = behind_tls_proxy.headers["strict-transport-security"]
    assert hsts.startswith("max-age=")
    assert int(hsts.split("=")[1].split(";")[0]) >= 31536000


async def test_request_ids_are_taken_from_trusted_proxies_only(
    module_server: LiveServer, proxied: LiveServer
) -> None:
    chosen = "edge-0123456789abcdef"
    async with module_server.http() as http:
        direct = await http.get("/healthz", headers={"X-Request-ID": chosen})
    async with proxied.http() as http:
        via_proxy = await http.get("/healthz", headers={"X-Request-ID": chosen})
        odd = await http.get("/healthz", headers={"X-Request-ID": "<script> and spaces"})
    assert direct.headers["x-request-id"] != chosen
    assert via_proxy.headers["x-request-id"] == chosen
    assert odd.headers["x-request-id"] != "<script> and spaces"  # even from the proxy


async def test_cors_answers_only_allowlisted_origins(proxied: LiveServer) -> None:
    async with proxied.http() as http:
        allowed = await http.get("/healthz", headers={"Origin": APP})
        evil = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        suffix = await http.get("/healthz", headers={"Origin": f"{APP}.evil.example"})
        preflight = await http.options(
            "/api/v1/channels",
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        evil_preflight = await http.options(
            "/api/v1/channels",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-origin" not in evil.headers
    assert "access-control-allow-origin" not in suffix.headers
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-credentials" not in preflight.headers
    assert evil_preflight.status_code == 400
    assert "access-control-allow-origin" not in evil_preflight.headers
    for answer in (allowed, evil, preflight, evil_preflight):
        assert_security_headers(answer)


async def test_no_cross_origin_access_by_default(module_server: LiveServer) -> None:
    async with module_server.http() as http:
        answer = await http.get("/healthz", headers={"Origin": APP})
    assert "access-control-allow-origin" not in answer.headers


async def test_the_defaults_allow_no_cross_origin_caller() -> None:
    from server.config import Settings

    defaults = Settings()
    assert defaults.cors_origins == ()
    assert defaults.allowed_origins == ()
    assert defaults.trusted_proxies == ()
