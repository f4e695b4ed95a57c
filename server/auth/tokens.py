"""Access tokens (JWT, HS256 pinned, key ids for rotation) and opaque refresh tokens.

Access tokens carry ``iss``, ``aud``, ``sub``, ``tid`` (tenant), ``sid`` (session), ``role``,
``typ: "access"``, ``iat`` and ``exp``, all required on verification, and ``knd`` (the
principal's kind) when it is not ``user``. Their header is ``alg`` and ``kid``. Headers that
point at other keys (``jwk``, ``jku``, ``x5u``, ``x5c``) are refused outright.

Nothing else is written, because a token's length is part of what verifying it costs
(pyjwt checks the base64url alphabet character by character): tokens issued before, with a
``jti``, ``knd: "user"`` and ``typ: "JWT"`` in the header, verify the same way (a ``jti``
was never read; ``knd`` defaults to ``user``; the header's ``typ`` is not checked).

Refresh tokens are ``rt1.<tenant id>.<32 random bytes, urlsafe>``; only their SHA-256 is
stored. The tenant id in the clear lets the auth layer scope the lookup; it is not a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from protocol.codes import ErrorCode
from protocol.errors import AuthError
from server.auth.principal import Principal
from storage.keys import KeyringError, write_secret_file
from storage.models import ROLES

ALGORITHM = "HS256"
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})
RETIRE_LEEWAY_S = 60  # clock skew between the nodes that sign and verify
_MAX_HEADER_CHARS = 1024  # a header with alg, typ and kid is ~60 characters
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "tid", "sid", "typ", "role"]
_ALGORITHMS = [ALGORITHM]
_MAX_KNOWN_HEADERS = 16  # header segments remembered (one per key in use, in practice)
_MAX_VERIFIED = 4096  # tokens whose verified claims are remembered, oldest dropped first


# The options merged once, not on every decode (``jwt.decode`` merges them per call).
_JWT = jwt.PyJWT(options={"require": _REQUIRED})


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Every key here verifies; one signs. A rotation adds a key that signs only from
    ``pending_at`` on, so every gateway knows it before any token signed with it reaches
    them; the replaced key keeps verifying until it is retired, which ``without`` allows
    once the last token it signed has expired."""

    keys: dict[str, bytes]  # kid -> secret
    active: str
    pending: str | None = None  # kid that takes over signing at pending_at
    pending_at: float = 0.0
    stopped: dict[str, float] = field(default_factory=dict)  # kid -> when it stopped signing

    def current(self) -> str:
        """The kid that signs now."""
        if self.pending is not None and time.time() >= self.pending_at:
            return self.pending
        return self.active

    def rotated(self, *, grace_s: float = 0.0) -> SigningKeys:
        """A new key that signs ``grace_s`` from now (at once by default: fine for one
        process; a cluster gives every gateway time to load it first). Every older key
        still verifies the tokens it signed, so a rotation logs nobody out."""
        if self.pending is not None and time.time() < self.pending_at:
            raise KeyringError(f"key {self.pending} is already pending; wait until it signs")
        signing = self.current()
        kid = uuid.uuid4().hex[:12]
        at = time.time() + grace_s
        keys = {**self.keys, kid: secrets.token_bytes(32)}
        stopped = {**self.stopped, signing: at}
        if grace_s <= 0:
            return SigningKeys(keys, kid, None, 0.0, stopped)
        return SigningKeys(keys, signing, kid, at, stopped)

    def without(self, kid: str, *, access_ttl_s: int) -> SigningKeys:
        """Retire ``kid``: refused while it signs or while tokens it signed may be live."""
        if kid not in self.keys:
            raise KeyringError(f"JWT key {kid} is not in the key set")
        if kid in (self.current(), self.pending):
            raise KeyringError(f"JWT key {kid} signs new tokens; rotate first")
        stopped = self.stopped.get(kid, 0.0)
        wait = stopped + access_ttl_s + RETIRE_LEEWAY_S - time.time()
        if wait > 0:
            raise KeyringError(
                f"tokens signed by {kid} may still be valid; retire it in {int(wait) + 1} s"
            )
        return self.retired(kid)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "active": self.active,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
        }
        if self.pending is not None:
            doc["pending"] = {"kid": self.pending, "at": self.pending_at}
        if self.stopped:
            doc["stopped"] = self.stopped
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> SigningKeys:
        doc = json.loads(raw)
        keys = {str(k): base64.b64decode(v) for k, v in doc["keys"].items()}
        if doc["active"] not in keys:
            raise ValueError("the active JWT key id is not in the key set")
        for kid, key in keys.items():
            if len(key) < 32:
                raise ValueError(f"JWT key {kid} is shorter than 256 bits")
        pending = doc.get("pending")
        if pending is not None and pending["kid"] not in keys:
            raise ValueError("the pending JWT key id is not in the key set")
        return cls(
            keys,
            str(doc["active"]),
            None if pending is None else str(pending["kid"]),
            0.0 if pending is None else float(pending["at"]),
            {str(k): float(v) for k, v in doc.get("stopped", {}).items()},
        )

    @classmethod
    def generate(cls) -> SigningKeys:
        kid = uuid.uuid4().hex[:12]
        return cls({kid: secrets.token_bytes(32)}, kid)

    def settled(self) -> SigningKeys:
        """The same keys with a pending key whose time has come made plainly active."""
        if self.pending is not None and time.time() >= self.pending_at:
            return SigningKeys(self.keys, self.pending, None, 0.0, self.stopped)
        return self

    def retired(self, kid: str) -> SigningKeys:
        """Without ``kid``: tokens it signed stop verifying. The signing key cannot go (see
        ``without`` for the check that its tokens have expired)."""
        now = self.settled()
        if kid in (now.active, now.pending):
            raise KeyringError("the active JWT key cannot be retired; rotate first")
        return SigningKeys(
            {k: v for k, v in now.keys.items() if k != kid},
            now.active,
            now.pending,
            now.pending_at,
            {k: v for k, v in now.stopped.items() if k != kid},
        )

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKeys:
        write_secret_file(path, cls.generate().to_json())
        return cls.from_json(path.read_bytes())


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: int


class AccessTokens:
    def __init__(self, keys: SigningKeys, *, issuer: str, audience: str, ttl_s: int) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self._kids: dict[str, str] = {}  # header segment -> kid, see _kid_of
        # token -> (the key that verified it, its principal), see verify
        self._verified: dict[str, tuple[bytes, Principal]] = {}

    def issue(
        self, *, tenant_id: str, subject: str, session_id: str, role: str, kind: str = "user"
    ) -> IssuedToken:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "tid": tenant_id,
            "sid": session_id,
            "role": role,
            "typ": "access",
            "iat": now,
            "exp": now + self.ttl_s,
        }
        if kind != "user":  # the default when verifying
            claims["knd"] = kind
        kid = self.keys.current()
        # No ``typ: "JWT"`` in the header (pyjwt leaves it out when it is None): the claims'
        # ``typ`` says what the token is, and nothing reads the header's.
        token = jwt.encode(
            claims, self.keys.keys[kid], algorithm=ALGORITHM, headers={"kid": kid, "typ": None}
        )
        return IssuedToken(token, claims["exp"])

    def use_keys(self, keys: SigningKeys) -> None:
        """Swap in a rotated key set (takes effect for the next issue and verify)."""
        self.keys = keys
        self._verified.clear()

    def verify(self, token: str) -> Principal:
        """The principal of a valid access token, decoded and verified once by pyjwt; only
        the header is read before that, to pick the key its ``kid`` names.

        A token that verified is remembered with its principal and the key that verified
        it (a few thousand, the oldest dropped first): clients reconnect with the token they
        hold, and a connect storm verified each one again (pyjwt's checks were ~9% of the
        server's CPU per connect, docs/BENCHMARKS.md). A remembered token is only the same
        string again: it is accepted while its ``exp`` is in the future, as pyjwt checks
        it, and while the key that verified it is still the one its kid names (a retired
        or replaced key drops it at once). Whether its session is still live is checked
        on every use, after this (``AuthService.current``)."""
        remembered = self._verified.get(token)
        if remembered is not None:
            verified_by, principal = remembered
            if self.keys.keys.get(self._kid_of(token)) is verified_by:
                if principal.expires_at > time.time():
                    return principal
                del self._verified[token]
                raise AuthError("token expired", code=ErrorCode.TOKEN_EXPIRED)
            del self._verified[token]
        key = self.keys.keys.get(self._kid_of(token))
        if key is None:
            raise AuthError("token not accepted")
        principal = self._decode(token, key)
        verified = self._verified
        if len(verified) >= _MAX_VERIFIED:
            del verified[next(iter(verified))]
        verified[token] = (key, principal)
        return principal

    def _decode(self, token: str, key: bytes) -> Principal:
        try:
            claims = _JWT.decode(
                token,
                key,
                algorithms=_ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", code=ErrorCode.TOKEN_EXPIRED) from None
        except jwt.PyJWTError:
            raise AuthError("token not accepted") from None
        if claims["typ"] != "access" or claims["role"] not in ROLES:
            raise AuthError("token not accepted")
        kind = claims.get("knd", "user")
        if kind not in ("user", "agent"):
            raise AuthError("token not accepted")
        return Principal(
            tenant_id=str(claims["tid"]),
            id=str(claims["sub"]),
            kind=kind,
            role=claims["role"],
            session_id=str(claims["sid"]),
            expires_at=int(claims["exp"]),
        )

    def _kid_of(self, token: str) -> str:
        """The key id an acceptable JOSE header names (unverified: only to choose the key).

        Every token one key signs has the same header segment, so the segments seen are
        remembered (a few; only ones that passed): a connect storm parses each once, not
        once per token. What the segment says is still covered by the signature pyjwt
        checks, and which key a kid names is looked up anew on every call (a retired key
        is gone at once)."""
        segment = token.partition(".")[0]
        kid = self._kids.get(segment)
        if kid is None:
            header = _unverified_header(token)
            if header.get("alg") != ALGORITHM or _FORBIDDEN_HEADERS & header.keys():
                raise AuthError("token not accepted")
            kid = str(header.get("kid", ""))
            if kid in self.keys.keys and len(self._kids) < _MAX_KNOWN_HEADERS:
                self._kids[segment] = kid
        return kid


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWT, unverified: only to choose the verifying key (the
    header is covered by the signature pyjwt checks next). ``jwt.get_unverified_header``
    would decode and validate the whole token, payload included, a second time."""
    segment, dot, _ = token.partition(".")
    if not dot or not segment or len(segment) > _MAX_HEADER_CHARS:
        raise AuthError("malformed token")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    return header


REFRESH_PREFIX = "rt1"


def new_refresh_token(tenant_id: str) -> str:
    return f"{REFRESH_PREFIX}.{tenant_id}.{secrets.token_urlsafe(32)}"


def refresh_token_tenant(token: str) -> str:
    """The tenant a refresh token claims to belong to (verified by the hashed lookup)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != REFRESH_PREFIX or not parts[1] or len(parts[2]) < 32:
        raise AuthError("invalid refresh token")
    return parts[1]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
