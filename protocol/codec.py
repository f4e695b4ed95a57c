"""Bytes in, typed frames out; frames in, bytes out. Decoding happens once, at the boundary."""

from __future__ import annotations

import re

import msgspec

from protocol.codes import ErrorCode
from protocol.errors import ProtocolError
from protocol.frames import CLIENT_FRAME_TYPES, ClientFrame, ServerFrame

_decoder = msgspec.json.Decoder(ClientFrame)
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()
_FIELD_PATH = re.compile(r"at `\$\.?([^`]*)`")
_NAMED_FIELD = re.compile(r"(?:unknown|required) field `([^`]*)`")


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Parse and validate one client frame; raise ``ProtocolError`` naming the problem."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, str(exc)) from None
    except msgspec.DecodeError:
        raise ProtocolError("frame is not a JSON object", code=ErrorCode.BAD_FRAME) from None
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> ProtocolError:
    # msgspec decodes nested JSON recursively; a deep enough nest exhausts the stack.
    return ProtocolError("JSON is nested too deeply", code=ErrorCode.BAD_FRAME)


def _classify(data: str | bytes, detail: str) -> ProtocolError:
    try:
        raw = _any_decoder.decode(data)
    except msgspec.DecodeError:
        return ProtocolError("frame is not a JSON object", code=ErrorCode.BAD_FRAME)
    except RecursionError:
        return _too_deep()
    if not isinstance(raw, dict):
        return ProtocolError("frame must be a JSON object", code=ErrorCode.BAD_FRAME)
    error = _classify_object(raw, detail)
    request_id = raw.get("id")
    # Echo the request id when it is itself well-formed, so the client can match the error.
    if (isinstance(request_id, str) and len(request_id) <= 64) or (
        isinstance(request_id, int)
        and not isinstance(request_id, bool)
        and 0 <= request_id <= 2**53
    ):
        error.request_id = request_id
    return error


def _classify_object(raw: dict[str, object], detail: str) -> ProtocolError:
    frame_type = raw.get("type")
    if not isinstance(frame_type, str):
        return ProtocolError("frame needs a string field `type`", code=ErrorCode.BAD_FRAME)
    if frame_type not in CLIENT_FRAME_TYPES:
        return ProtocolError(
            f"unknown frame type (expected one of {', '.join(CLIENT_FRAME_TYPES)})",
            code=ErrorCode.UNKNOWN_TYPE,
        )
    # msgspec messages name the field path and the expectation, never the offending value.
    return invalid_field(detail)


def invalid_field(detail: str, prefix: str = "") -> ProtocolError:
    """An ``invalid_field`` error from a msgspec validation message, naming the field."""
    return ProtocolError(
        f"{prefix}{detail}", code=ErrorCode.INVALID_FIELD, field=_field_path(detail)
    )


def _field_path(detail: str) -> str | None:
    named = _NAMED_FIELD.search(detail)
    at = _FIELD_PATH.search(detail)
    if named and at and at.group(1):
        return f"{at.group(1)}.{named.group(1)}"
    if named:
        return named.group(1)
    return at.group(1) if at else None


def encode(frame: ServerFrame) -> bytes:
    return _encoder.encode(frame)


def field_of(error: ProtocolError) -> str | None:
    """The field path an ``invalid_field`` error refers to, when msgspec named one."""
    return error.field or _field_path(error.message)
