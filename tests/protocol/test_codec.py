"""Decoding once at the boundary: typed frames out, or a ProtocolError naming the problem."""

from __future__ import annotations

import json

import pytest

from protocol import frames as f
from protocol.codec import decode_client_frame, encode, field_of
from protocol.codes import CloseCode, ErrorCode
from protocol.errors import ERROR_TABLE, ProtocolError


def test_decodes_each_client_frame_type() -> None:
    assert decode_client_frame('{"type": "ping"}') == f.Ping()
    frame = decode_client_frame(
        b'{"type": "publish", "channel": "general", "body": "hi", "client_msg_id": "c1", "id": 4}'
    )
    assert frame == f.Publish(channel="general", body="hi", client_msg_id="c1", id=4)
    sub = decode_client_frame('{"type": "subscribe", "channel": "a.b-c_d", "since": 10}')
    assert isinstance(sub, f.Subscribe)
    assert sub.since == 10


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        ("nope", ErrorCode.BAD_FRAME, None),
        ('{"type": 3}', ErrorCode.BAD_FRAME, None),
        ('{"type": "fly"}', ErrorCode.UNKNOWN_TYPE, None),
        ('{"type": "publish", "channel": "x", "body": []}', ErrorCode.INVALID_FIELD, "body"),
        ('{"type": "subscribe", "channel": ""}', ErrorCode.INVALID_FIELD, "channel"),
        ('{"type": "history", "channel": "x", "limit": 0}', ErrorCode.INVALID_FIELD, "limit"),
        ('{"type": "ping", "id": {"a": 1}}', ErrorCode.INVALID_FIELD, "id"),
    ],
)
def test_rejects_with_a_stable_code(raw: str, code: ErrorCode, field: str | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_frame(raw)
    assert caught.value.code == code
    assert field_of(caught.value) == field


def test_error_echoes_a_well_formed_request_id() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_frame('{"type": "publish", "channel": "x", "id": "r1"}')
    assert caught.value.request_id == "r1"


def test_server_frames_encode_with_their_type_and_omit_empty_ids() -> None:
    data = json.loads(encode(f.Pong()))
    assert data == {"type": "pong"}
    ack = json.loads(encode(f.Ack(message_id="m", seq=3, channel="c", id=1)))
    assert ack == {"type": "ack", "message_id": "m", "seq": 3, "channel": "c", "id": 1}


def test_every_error_code_has_one_wire_mapping() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)
    assert all(400 <= m.http_status < 600 for m in ERROR_TABLE.values())


def test_close_code_ranges() -> None:
    for code in CloseCode:
        assert 4000 <= code <= 4999
    assert not CloseCode.UNAUTHORIZED.reconnect
    assert CloseCode.SLOW_CONSUMER.reconnect
