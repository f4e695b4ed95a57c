"""GET /api/v1/audit/export?format=jsonl|csv: the tenant's audit chain, streamed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from protocol.codes import ErrorCode
from protocol.errors import ProtocolError
from server.api.http import authenticate, client_ip, runtime_of
from server.audit import ExportFormat, export

_MEDIA: dict[str, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


async def export_audit(request: Request) -> Response:
    principal = await authenticate(request)
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in _MEDIA:
        raise ProtocolError(
            "query parameter `format` must be jsonl or csv", code=ErrorCode.INVALID_FIELD
        )
    format_: ExportFormat = "csv" if fmt == "csv" else "jsonl"
    lines = await export(runtime_of(request).store, principal, client_ip(request), format_)
    return StreamingResponse(
        lines,
        media_type=_MEDIA[fmt],
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="audit-{principal.tenant_id}.{fmt}"',
        },
    )
