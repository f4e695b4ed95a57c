"""The WebSocket Origin allowlist: exact (scheme, host, port) matches, nothing looser.

A browser always sends ``Origin`` on a WebSocket handshake, and a page cannot forge it; so
checking it before accepting stops other sites from opening sockets with the user's
ambient credentials (cross-site WebSocket hijacking). ``https://app.example.com.evil.example``
and ``https://app.example.com:8443`` are different origins from ``https://app.example.com``;
``null`` (sandboxed frames, files) is never allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize(origin: str) -> str | None:
    """``scheme://host[:port]`` in canonical form, or None if ``origin`` is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if parts.username or parts.password or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]) -> None:
        normalized = set()
        for entry in allowed:
            value = normalize(entry)
            if value is None:
                raise ValueError(f"BAYCHAT_ALLOWED_ORIGINS: {entry!r} is not an origin")
            normalized.add(value)
        self._allowed = frozenset(normalized)

    def allows(self, origin: str) -> bool:
        value = normalize(origin)
        return value is not None and value in self._allowed
