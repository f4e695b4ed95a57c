"""Who is really on the other end: the client address and scheme behind trusted proxies.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only when the direct peer is a
configured trusted proxy (``BAYCHAT_TRUSTED_PROXIES``: addresses or CIDRs). The client is
the right-most address in ``X-Forwarded-For`` that is not itself a trusted proxy: entries to
its left were written by the client and can say anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Peer:
    ip: str  # the client's address as far as we can trust it
    secure: bool  # the client reached us over TLS (directly or at a trusted proxy)
    via_proxy: bool  # the direct peer is a trusted proxy


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class TrustedProxies:
    def __init__(self, entries: Iterable[str]) -> None:
        self._networks: list[Network] = [ipaddress.ip_network(e, strict=False) for e in entries]

    def trusts(self, address: str) -> bool:
        if not self._networks:
            return False  # no proxies configured: nothing to parse
        parsed = _address(address)
        return parsed is not None and any(parsed in net for net in self._networks)

    def resolve(self, peer: str, scheme: str, forwarded_for: str, forwarded_proto: str) -> Peer:
        secure = scheme in ("https", "wss")
        if not self.trusts(peer):
            return Peer(peer, secure, via_proxy=False)
        client = peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if _address(hop) is None:
                break  # garbage from the client side: stop at the last address we could read
            client = hop
            if not self.trusts(hop):
                break
        proto = forwarded_proto.split(",")[0].strip().lower()
        return Peer(client, secure or proto == "https", via_proxy=True)
