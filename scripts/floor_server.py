"""The floor: the least a server can do for the load generator, to compare BayChat against.

The issue's targets name a floor measured "the same way on this machine": writing one
pre-built frame to each socket (``fanout``), accepting, upgrading and closing (``storm``).
The machines these benchmarks run on differ from one session to the next, so a figure on
its own says little; its ratio to this floor, measured in the same sitting, says how much
of it is BayChat. This server answers exactly what ``baychat-loadtest`` sends and nothing
more: no checks, no authentication (any login gets a constant token), no storage, no rate
limits, no framework; one uvloop ``asyncio.Protocol`` per socket. A publish is acked at
once and its ``message`` frame built once and written to every subscriber's socket
straight away (no coalescing of writes).

    .venv/bin/python scripts/floor_server.py --port 8800 &
    .venv/bin/baychat-loadtest fanout --target http://127.0.0.1:8800 --server-pid $! \\
        --credentials FLOOR.json ...      # FLOOR.json: any tenant and accounts

Not for anything but benchmarks: it trusts every byte it gets.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
from typing import Any, cast

import msgspec
import uvloop
from websockets.speedups import apply_mask

from server.wsprotocol import text_frame  # the server's own framing: the same bytes

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_HEAD_END = b"\r\n\r\n"
_READY = b'{"type":"ready","protocol":1}'
_decode = msgspec.json.Decoder()
_encode = msgspec.json.encode


class Channels:
    """Who is subscribed to what, and each channel's next sequence number."""

    def __init__(self) -> None:
        self.members: dict[str, list[asyncio.Transport]] = {}
        self.seqs: dict[str, itertools.count[int]] = {}
        self.ids = itertools.count(1)


class FloorProtocol(asyncio.Protocol):
    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.websocket = False
        self.subscribed: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        for name in self.subscribed:
            members = self.channels.members.get(name, [])
            if self.transport in members:
                members.remove(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            used = self.frame() if self.websocket else self.request()
            if not used:
                return

    # -- HTTP -----------------------------------------------------------------------------

    def request(self) -> bool:
        end = self.buffer.find(_HEAD_END)
        if end < 0:
            return False
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < end + 4 + length:
            return False
        self.buffer = self.buffer[end + 4 + length :]
        assert self.transport is not None
        method, path = head[0].split(" ")[:2]
        if path.startswith("/ws") and headers.get("upgrade", "").lower() == "websocket":
            key = headers["sec-websocket-key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept
                + b"\r\n\r\n"
                + text_frame(_READY)
            )
            self.websocket = True
        elif method == "POST" and path == "/api/v1/auth/login":
            self.respond(b"200 OK", b'{"access_token":"floor","token_type":"bearer"}')
        elif method == "POST" and path == "/api/v1/channels":
            self.respond(b"201 Created", b'{"id":"floor","name":"floor"}')
        else:
            self.respond(b"404 Not Found", b'{"error":"not_found"}')
        return True

    def respond(self, status: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    # -- WebSocket ------------------------------------------------------------------------

    def frame(self) -> bool:
        buffer = self.buffer
        if len(buffer) < 2:
            return False
        size, start = buffer[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + 4 + size:
            return False
        mask = buffer[start : start + 4]
        payload = apply_mask(buffer[start + 4 : start + 4 + size], mask)
        self.buffer = buffer[start + 4 + size :]
        opcode = buffer[0] & 0x0F
        assert self.transport is not None
        if opcode == 0x8:  # close: answer with the same code, then close
            self.transport.write(bytes((0x88, len(payload[:2]))) + payload[:2])
            self.transport.close()
        elif opcode == 0x9:  # ping
            self.transport.write(bytes((0x8A, len(payload))) + payload)
        elif opcode == 0x1:
            self.on_text(_decode.decode(payload))
        return True

    def on_text(self, frame: dict[str, Any]) -> None:
        assert self.transport is not None
        kind = frame.get("type")
        channels = self.channels
        if kind == "publish":
            name = frame["channel"]
            seq = next(channels.seqs.setdefault(name, itertools.count(1)))
            message_id = f"m{next(channels.ids)}"
            self.transport.write(
                text_frame(
                    _encode(
                        {
                            "type": "ack",
                            "id": frame.get("id"),
                            "channel": name,
                            "seq": seq,
                            "message_id": message_id,
                        }
                    )
                )
            )
            data = text_frame(
                _encode(
                    {
                        "type": "message",
                        "channel": name,
                        "seq": seq,
                        "id": message_id,
                        "sender": "floor",
                        "body": frame["body"],
                    }
                )
            )
            for member in channels.members.get(name, ()):
                member.write(data)
        elif kind == "subscribe":
            name = frame["channel"]
            channels.members.setdefault(name, []).append(self.transport)
            self.subscribed.append(name)
            reply = {"type": "subscribed", "id": frame.get("id"), "channel": name, "seq": 0}
            self.transport.write(text_frame(_encode(reply)))
        elif "id" in frame:
            self.transport.write(text_frame(_encode({"type": "ok", "id": frame["id"]})))


async def serve(host: str, port: int) -> None:
    channels = Channels()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(channels), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8800)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
