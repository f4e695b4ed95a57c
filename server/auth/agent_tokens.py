"""Agent API tokens: ``bay_`` + 32 characters of CSPRNG base62 + a 6-character base62
CRC32 checksum of those 32 characters.

The fixed prefix lets secret scanners recognise a leaked token; the checksum lets the
server refuse a mistyped or truncated token before any database lookup. The checksum is no
security measure (anyone can compute it): the secret is the ~190 random bits. Only the
SHA-256 of the whole token is stored (``server.auth.tokens.token_digest``).
"""

from __future__ import annotations

import secrets
import string
import zlib

from protocol.errors import AuthError

PREFIX = "bay_"
SECRET_CHARS = 32
CHECKSUM_CHARS = 6
TOKEN_CHARS = len(PREFIX) + SECRET_CHARS + CHECKSUM_CHARS
DISPLAY_PREFIX_CHARS = len(PREFIX) + 4
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_SET = frozenset(BASE62)


def _base62(value: int, width: int) -> str:
    digits = []
    while value:
        value, rest = divmod(value, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, BASE62[0])


def checksum(secret: str) -> str:
    return _base62(zlib.crc32(secret.encode()), CHECKSUM_CHARS)


def new_agent_token() -> str:
    secret = "".join(secrets.choice(BASE62) for _ in range(SECRET_CHARS))
    return PREFIX + secret + checksum(secret)


def is_agent_token(token: str) -> bool:
    """Whether ``token`` claims to be an agent token (it may still be malformed)."""
    return token.startswith(PREFIX)


def check_agent_token(token: str) -> None:
    """Refuse a token that is not well formed or whose checksum does not match. Pure: no
    lookup, and the same answer whatever is wrong, so it reveals nothing."""
    body = token[len(PREFIX) :]
    if (
        len(token) != TOKEN_CHARS
        or not token.startswith(PREFIX)
        or not _BASE62_SET.issuperset(body)
        or checksum(body[:SECRET_CHARS]) != body[SECRET_CHARS:]
    ):
        raise AuthError("malformed agent token")


def display_parts(token: str) -> tuple[str, str]:
    """What listings show of a token: its first eight characters and its last four."""
    return token[:DISPLAY_PREFIX_CHARS], token[-4:]
