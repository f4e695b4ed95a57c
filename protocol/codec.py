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


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Parse and validate one client frame; raise ``ProtocolError`` naming the problem."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, str(exc)) from None
    except msgspec.DecodeError:
        raise ProtocolError("frame is not a JSON object", code=ErrorCode.BAD_FRAME) from None


def _classify(data: str | bytes, detail: str) -> ProtocolError:
    try:
        raw = _any_decoder.decode(data)
    except msgspec.DecodeError:
        return ProtocolError("frame is not a JSON object", code=ErrorCode.BAD_FRAME)
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
    return ProtocolError(detail, code=ErrorCode.INVALID_FIELD)


def encode(frame: ServerFrame) -> bytes:
    return _encoder.encode(frame)


def field_of(error: ProtocolError) -> str | None:
    """The field path an ``invalid_field`` error refers to, when msgspec named one."""
    match = _FIELD_PATH.search(error.message)
    return match.group(1) if match else None
