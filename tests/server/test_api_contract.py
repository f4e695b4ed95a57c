"""Schemathesis against the served OpenAPI document of a real ``baychat serve``: generated
valid and invalid requests for every operation; no 5xx, no response outside its documented
status codes, media types, headers and schemas.

Schemathesis' pytest plugin does not run under pytest 9 (it reads a private attribute), so
each operation's strategy is driven with hypothesis directly; the checks are schemathesis'
own (``case.call_and_validate``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.schemas import BaseSchema

from server.api.routes import OPENAPI_PATH, OPERATIONS
from tests.process import ServeProcess, serve_process

PASSWORD = "contract password 1234"
EXAMPLES = 40  # per operation: enough to reach every branch, few enough for CI


@dataclass
class Api:
    server: ServeProcess
    token: str


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    relaxed = "100000/minute"
    with serve_process(
        tmp_path_factory.mktemp("contract"),
        **{
            f"rate_{name}": relaxed
            for name in (
                "login_ip",
                "login_account",
                "login_account_ip",
                "refresh",
                "http_write",
            )
        },
    ) as server:
        server.cli("tenant", "create", "contract")
        server.cli(
            "user",
            "create",
            "contract",
            "ann@example.com",
            "--role",
            "admin",
            "--password-stdin",
            stdin=PASSWORD,
        )
        tokens = httpx.post(
            f"{server.http_url}/api/v1/auth/login",
            json={"tenant": "contract", "email": "ann@example.com", "password": PASSWORD},
        ).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (
            httpx.post(
                f"{server.http_url}/api/v1/channels", json={"name": "general"}, headers=headers
            ).status_code
            == 201
        )
        yield Api(server, tokens["access_token"])


@pytest.fixture(scope="module")
def api_schema(api: Api) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{api.server.http_url}{OPENAPI_PATH}")


CASES = [
    (op.method, op.path, mode)
    for op in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # an operation without inputs has no invalid request to generate
    if mode is GenerationMode.POSITIVE or op.body or op.query or op.params
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: str(v))
def test_the_api_keeps_its_documented_contract(
    api: Api, api_schema: BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    auth = {"Authorization": f"Bearer {api.token}"}
    calls = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=api.server.http_url, headers=auth)
        calls.append(response.status_code)

    check()
    assert calls, "schemathesis generated no request"
    assert all(status < 500 for status in calls)
