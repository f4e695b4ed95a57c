"""The OpenAPI 3.1 document of the HTTP API, generated from the route table's msgspec schemas
(the same types that validate requests), so it cannot say something the code does not do."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.codes import ErrorCode
from protocol.errors import ERROR_TABLE
from server.api.operation import Operation
from server.api.schemas import ErrorResponse

REF = "#/components/schemas/{name}"
_JSON = "application/json"


def _parameters(schema: type[Any], location: str) -> list[dict[str, Any]]:
    (_,), components = msgspec.json.schema_components([schema], ref_template=REF)
    struct = components[schema.__name__]
    required = set(struct.get("required", ()))
    params = []
    for name, prop in struct["properties"].items():
        params.append(
            {
                "name": name,
                "in": location,
                "required": location == "path" or name in required,
                "schema": prop,
            }
        )
    return params


def _error_responses(codes: tuple[ErrorCode, ...]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERROR_TABLE[code].http_status, []).append(code.value)
    responses: dict[str, Any] = {}
    for status, names in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": "error: " + ", ".join(names),
            "content": {_JSON: {"schema": {"$ref": REF.format(name="ErrorResponse")}}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "required": True,
                    "description": "seconds to wait before trying again",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            }
        responses[str(status)] = response
    return responses


def openapi_document(operations: list[Operation], *, version: str) -> dict[str, Any]:
    bodies: list[type[Any]] = [ErrorResponse]
    for op in operations:
        bodies.extend(t for t in (op.body, op.response) if t is not None)
    refs, components = msgspec.json.schema_components(bodies, ref_template=REF)
    ref_of = {id(t): ref for t, ref in zip(bodies, refs, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        doc: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": list(op.tags),
        }
        if op.description:
            doc["description"] = op.description
        params: list[dict[str, Any]] = []
        if op.params is not None:
            params += _parameters(op.params, "path")
        if op.query is not None:
            params += _parameters(op.query, "query")
        if params:
            doc["parameters"] = params
        if op.body is not None:
            doc["requestBody"] = {
                "required": True,
                "content": {_JSON: {"schema": ref_of[id(op.body)]}},
            }
        responses: dict[str, Any] = _error_responses(op.error_codes)
        success = (
            {"content": {_JSON: {"schema": ref_of[id(op.response)]}}}
            if op.response is not None
            else {}
        )
        for status in (op.status, *op.other_statuses):
            # a success schema wins over an error one (readiness answers 503 with its body)
            responses[str(status)] = {"description": "success", **success}
        doc["responses"] = dict(sorted(responses.items()))
        doc["security"] = [{"bearer": []}] if op.auth else []
        paths.setdefault(op.path, {})[op.method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "BayChat HTTP API",
            "version": version,
            "description": (
                "Errors carry a stable `code` (see docs/PROTOCOL.md) and a `correlation_id`. "
                "The WebSocket protocol at /ws is described in docs/PROTOCOL.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
