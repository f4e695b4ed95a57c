"""Message bodies carry their scheduled send time and have the requested size."""

from __future__ import annotations

import json

from loadtest.client import make_body, publish_prefix, scheduled_at


def test_body_round_trips_the_schedule_and_has_the_size() -> None:
    body = make_body(123_456_789_012, 200)
    assert len(body) == 200
    assert scheduled_at(body) == 123_456_789_012


def test_publish_frame_is_valid_json() -> None:
    frame = publish_prefix("lt-fanout") + make_body(5, 20).encode() + b'","id":7}'
    decoded = json.loads(frame)
    assert decoded["type"] == "publish"
    assert decoded["channel"] == "lt-fanout"
    assert decoded["id"] == 7
