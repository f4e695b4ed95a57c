"""The inbox between ``SocketProtocol`` and its session: reading pauses once a second
message waits unread (not at every message: a pause and a resume are two system calls),
resumes once the session has taken them all, and nothing is lost or reordered."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from server.wsprotocol import SocketProtocol


class _Transport(asyncio.Transport):
    """What the protocol calls on its transport, recording pauses and resumes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self.calls.append("close")

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never called here
    raise AssertionError("not an ASGI request")


def _open_protocol() -> tuple[SocketProtocol, _Transport]:
    config = Config(app=_app, ws_ping_interval=None)
    config.load()
    protocol = SocketProtocol(config, ServerState(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    # As after an accepted handshake: only frames arrive from here on.
    protocol.conn = ServerProtocol(state=OPEN, max_size=config.ws_max_size)
    protocol.handshake_complete = True
    protocol._raw = None
    protocol._reader = None  # the request was read
    protocol._open = True  # and the 101 sent
    return protocol, transport


def _client_frame(text: str) -> bytes:
    """A masked text frame, as a client sends it."""
    frame = Frame(Opcode.TEXT, text.encode())
    return frame.serialize(mask=True)


async def test_one_message_at_a_time_never_pauses_reading() -> None:
    protocol, transport = _open_protocol()
    for i in range(5):
        protocol.data_received(_client_frame(f"m{i}"))
        assert await protocol.receive() == f"m{i}"
    assert transport.calls == []


async def test_reading_pauses_at_the_second_unread_message_and_resumes_when_drained() -> None:
    protocol, transport = _open_protocol()
    protocol.data_received(_client_frame("a"))
    assert transport.calls == []
    # One read bringing three more: all are kept, reading pauses once.
    protocol.data_received(b"".join(_client_frame(m) for m in ("b", "c", "d")))
    assert transport.calls == ["pause"]
    received = [await protocol.receive() for _ in range(3)]
    assert transport.calls == ["pause"]  # one still unread
    received.append(await protocol.receive())
    assert received == ["a", "b", "c", "d"]
    assert transport.calls == ["pause", "resume"]


async def test_the_end_of_the_connection_is_seen_after_what_was_unread() -> None:
    protocol, _ = _open_protocol()
    protocol.data_received(_client_frame("last"))
    protocol.connection_lost(None)
    assert await protocol.receive() == "last"
    assert await protocol.receive() is None
    assert await protocol.receive() is None
