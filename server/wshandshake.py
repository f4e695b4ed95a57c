"""The opening handshake's HTTP request, read by httptools (compiled, uvicorn's own HTTP
parser) into the ``websockets`` ``Request`` that ``ServerProtocol.accept`` then checks.

Why: websockets reads the request line by line in pure Python (a generator per line, a
regex per header), ~5% of the server's CPU per connect in ``storm`` on top of uvicorn
having parsed the same bytes with httptools already (docs/BENCHMARKS.md). What websockets'
reader refuses is refused here the same way, with its limits (``MAX_LINE_LENGTH``,
``MAX_NUM_HEADERS``, both settable through its environment variables):

* a request line too long: 414; a header line too long, or too many headers: 431;
* anything else it cannot take (not HTTP/1.x, a header name that is not a token, a value
  with control characters, a non-ASCII method or path, a body or a transfer coding): no
  answer, the connection is closed.

Whether the request is a valid WebSocket upgrade (method, version, ``Connection``,
``Upgrade``, ``Sec-WebSocket-Key``/``-Version``) is still websockets' ``accept`` to say.
"""

from __future__ import annotations

import http
import re

import httptools
from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request, Response
from websockets.server import ServerProtocol

# RFC 9110 token and field value, as websockets' reader checks them.
_TOKEN = re.compile(rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_CRLF = 2


class Unparsable(Exception):
    """httptools could not parse the head (uvicorn's HTTP protocol answers such bytes 400)."""


class HandshakeRefused(Exception):
    """The request cannot be taken: ``response`` is the answer to send before closing, or
    None to close without one."""

    def __init__(self, response: Response | None) -> None:
        super().__init__(response.status_code if response is not None else "unreadable")
        self.response = response


class RequestReader:
    """Feeds the bytes of one upgrade request to httptools; ``feed`` returns the request
    once its head is complete (None until then) or raises ``HandshakeRefused``."""

    __slots__ = ("_complete", "_headers", "_parser", "_upgrade", "_url")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._complete = False
        self._upgrade = False  # httptools saw an upgrade (Connection: upgrade + Upgrade)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._complete = True

    # -- reading ------------------------------------------------------------------------------

    def feed(self, data: bytes, conn: ServerProtocol) -> Request | None:
        """``conn`` makes the refusals' responses (``reject``)."""
        try:
            complete = self.feed_head(data)
        except Unparsable:
            raise HandshakeRefused(None) from None
        return self.request(conn) if complete else None

    def feed_head(self, data: bytes) -> bool:
        """Parse ``data``: True once the head is complete; ``Unparsable`` if it is not
        HTTP httptools can read."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The head is complete; what follows it is the peer's first frames.
            self._upgrade = True
        except httptools.HttpParserError:
            raise Unparsable from None
        return self._complete

    def is_websocket_upgrade(self) -> bool:
        """Whether uvicorn's HTTP protocol would hand this complete head to its WebSocket
        protocol as it is: HTTP/1.1, an upgrade to ``websocket`` by the test uvicorn applies
        (its ``HttpToolsProtocol._should_upgrade``: the last ``Connection`` header lists
        ``upgrade``, the last ``Upgrade`` header is ``websocket``, case-insensitively)."""
        if not self._upgrade or self._parser.get_http_version() != "1.1":
            return False
        connection: list[bytes] = []
        upgrade = None
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
            elif lowered == b"upgrade":
                upgrade = value.lower()
        return upgrade == b"websocket" and b"upgrade" in connection

    def request(self, conn: ServerProtocol) -> Request:
        """The complete head as a ``Request``, or ``HandshakeRefused`` (``conn`` makes the
        refusals' responses)."""
        parser = self._parser
        method = parser.get_method()
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HandshakeRefused(None)
        url = self._url
        line = len(method) + len(url) + len(" HTTP/1.1 ") + _CRLF
        if line > MAX_LINE_LENGTH:
            raise HandshakeRefused(
                _too_large(conn, http.HTTPStatus.REQUEST_URI_TOO_LONG, line)  # 414
            )
        raw = self._headers
        if len(raw) > MAX_NUM_HEADERS:
            raise HandshakeRefused(
                conn.reject(
                    http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "Failed to open a WebSocket connection: "
                    f"expected no more than {MAX_NUM_HEADERS} headers.\n",
                )
            )
        headers = Headers()
        for name, value in raw:
            size = len(name) + len(value) + len(": ") + _CRLF
            if size > MAX_LINE_LENGTH:
                raise HandshakeRefused(
                    _too_large(conn, http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, size)
                )
            value = value.strip(b" \t")
            if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
                raise HandshakeRefused(None)
            headers[name.decode("ascii")] = value.decode("iso-8859-1")
        if "Transfer-Encoding" in headers or not set(headers.get_all("Content-Length")) <= {"0"}:
            raise HandshakeRefused(None)  # no request body on an upgrade
        try:
            path = url.decode("ascii")
            verb = method.decode("ascii")
        except UnicodeDecodeError:
            raise HandshakeRefused(None) from None
        self._headers = []
        return Request(path, headers, verb, f"HTTP/{version}")


def _too_large(conn: ServerProtocol, status: http.HTTPStatus, size: int) -> Response:
    return conn.reject(
        status,
        "Failed to open a WebSocket connection: "
        f"read {size} bytes, expected no more than {MAX_LINE_LENGTH} bytes.\n",
    )
