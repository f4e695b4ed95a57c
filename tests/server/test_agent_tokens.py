"""The bay_ token format: recognisable, checksummed, refused when mistyped."""

from __future__ import annotations

import re
import zlib

import pytest

from protocol.errors import AuthError
from server.auth.agent_tokens import (
    BASE62,
    check_agent_token,
    checksum,
    display_parts,
    new_agent_token,
)

FORMAT = re.compile(r"^bay_[0-9A-Za-z]{32}[0-9A-Za-z]{6}$")


def test_new_tokens_have_the_documented_format_and_a_valid_checksum() -> None:
    tokens = {new_agent_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert FORMAT.match(token)
        check_agent_token(token)


def test_checksum_is_base62_crc32_of_the_secret() -> None:
    secret = "a" * 32
    value = 0
    for char in checksum(secret):
        value = value * 62 + BASE62.index(char)
    assert value == zlib.crc32(secret.encode())


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:10] + ("x" if t[10] != "x" else "y") + t[11:],  # one character mistyped
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # checksum mistyped
        lambda t: t[:-1],  # truncated
        lambda t: t + "0",  # too long
        lambda t: "bay-" + t[4:],  # wrong prefix
        lambda t: t[:20] + "!" + t[21:],  # outside the alphabet
        lambda t: t[:4] + t[5:] + t[4],  # transposed
    ],
)
def test_mangled_tokens_are_refused_without_a_lookup(mangle: object) -> None:
    token = new_agent_token()
    bad = mangle(token)  # type: ignore[operator]
    assert bad != token
    with pytest.raises(AuthError):
        check_agent_token(bad)


def test_listings_show_prefix_and_last_four_only() -> None:
    token = new_agent_token()
    prefix, last_four = display_parts(token)
    assert prefix == token[:8]
    assert prefix.startswith("bay_")
    assert last_four == token[-4:]
