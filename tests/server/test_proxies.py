"""Client addresses behind trusted proxies only."""

from __future__ import annotations

from server.proxies import TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8", "192.0.2.1"])


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    peer = PROXIES.resolve("198.51.100.7", "http", "203.0.113.9", "https")
    assert (peer.ip, peer.secure, peer.via_proxy) == ("198.51.100.7", False, False)


def test_behind_a_trusted_proxy_the_forwarded_client_is_believed() -> None:
    peer = PROXIES.resolve("10.1.2.3", "http", "203.0.113.9", "https")
    assert (peer.ip, peer.secure, peer.via_proxy) == ("203.0.113.9", True, True)


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    # the client wrote "1.1.1.1" itself; our proxies appended the real hops after it
    peer = PROXIES.resolve("192.0.2.1", "http", "1.1.1.1, 203.0.113.9, 10.9.9.9", "")
    assert peer.ip == "203.0.113.9"


def test_garbage_in_the_header_stops_the_walk() -> None:
    peer = PROXIES.resolve("10.1.2.3", "http", "evil, <script>", "")
    assert peer.ip == "10.1.2.3"
    peer = PROXIES.resolve("10.1.2.3", "http", "", "")
    assert peer.ip == "10.1.2.3"


def test_tls_at_the_server_itself_is_secure() -> None:
    assert PROXIES.resolve("198.51.100.7", "https", "", "").secure
    assert PROXIES.resolve("198.51.100.7", "wss", "", "").secure
