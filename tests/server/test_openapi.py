"""The OpenAPI document is generated from the route table, and matches what is mounted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.routing import Route, WebSocketRoute

from protocol.errors import ERROR_TABLE
from server.api.openapi import REF
from server.api.routes import OPENAPI_PATH, OPERATIONS
from server.app import create_app
from tests.harness import LiveServer, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _mounted(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(make_settings(tmp_path))
    mounted = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            continue  # /ws speaks the WebSocket protocol of docs/PROTOCOL.md, not OpenAPI
        assert isinstance(route, Route), f"{route!r} is mounted outside the route table"
        for method in route.methods or ():
            if method != "HEAD":  # starlette's automatic HEAD for every GET
                mounted.add((method, route.path))
    return mounted


async def test_the_document_is_served_and_lists_exactly_the_mounted_routes(
    module_server: LiveServer, tmp_path: Path
) -> None:
    async with module_server.http() as http:
        answer = await http.get(OPENAPI_PATH)
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert documented == _mounted(tmp_path)


async def test_request_schemas_are_the_validating_schemas(module_server: LiveServer) -> None:
    async with module_server.http() as http:
        document = (await http.get(OPENAPI_PATH)).json()
    components = document["components"]["schemas"]
    for op in OPERATIONS:
        doc = document["paths"][op.path][op.method.lower()]
        if op.body is not None:
            ref = doc["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref == REF.format(name=op.body.__name__)
            _, expected = msgspec.json.schema_components([op.body], ref_template=REF)
            assert components[op.body.__name__] == expected[op.body.__name__]
            assert components[op.body.__name__]["additionalProperties"] is False
        names = {p["name"] for p in doc.get("parameters", [])}
        for schema in (op.params, op.query):
            if schema is not None:
                assert set(schema.__struct_fields__) <= names


async def test_every_error_status_of_an_operation_is_documented(
    module_server: LiveServer,
) -> None:
    async with module_server.http() as http:
        document = (await http.get(OPENAPI_PATH)).json()
    for op in OPERATIONS:
        responses: dict[str, Any] = document["paths"][op.path][op.method.lower()]["responses"]
        for code in op.error_codes:
            assert str(ERROR_TABLE[code].http_status) in responses, (op.path, code)
        assert str(op.status) in responses
        if op.auth:
            assert "401" in responses
            assert document["paths"][op.path][op.method.lower()]["security"] == [{"bearer": []}]
