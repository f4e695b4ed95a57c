"""JWT hardening: one test per attack on access tokens, and key rotation.

Every refusal test forges its token with ``forge``, and ``test_forge_makes_acceptable_tokens``
shows that the same helper with nothing changed produces a token that IS accepted: each
refusal is caused by the one thing the attack changes.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from protocol.codes import CloseCode, ErrorCode
from protocol.errors import AuthError
from server.auth import tokens as tokens_module
from server.auth.tokens import AccessTokens, SigningKeys
from tests.harness import LiveServer, assert_closed

KEYS = SigningKeys.generate()
ISSUER = AUDIENCE = "baychat"


def verifier(keys: SigningKeys = KEYS) -> AccessTokens:
    return AccessTokens(keys, issuer=ISSUER, audience=AUDIENCE, ttl_s=900)


def claims(**changes: Any) -> dict[str, Any]:
    """Valid access-token claims; a value of ``...`` removes that claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "tid": "tenant-1",
        "sid": "session-1",
        "role": "member",
        "knd": "user",
        "typ": "access",
        "iat": now,
        "exp": now + 600,
        "jti": "j",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def forge(
    payload: dict[str, Any] | None = None,
    *,
    key: Any = None,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    return jwt.encode(
        payload if payload is not None else claims(),
        key if key is not None else KEYS.keys[KEYS.active],
        algorithm=algorithm,
        headers={"kid": KEYS.active, **(headers or {})},
    )


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def refused(token: str, code: ErrorCode = ErrorCode.UNAUTHORIZED) -> None:
    with pytest.raises(AuthError) as caught:
        verifier().verify(token)
    assert caught.value.code == code


def test_forge_makes_acceptable_tokens() -> None:
    principal = verifier().verify(forge())
    assert (principal.tenant_id, principal.id, principal.kind) == ("tenant-1", "user-1", "user")


def test_issued_tokens_carry_only_what_a_verifier_reads() -> None:
    # A token's length is part of what verifying it costs: no jti, no knd for a user, no
    # typ in the header.
    token = (
        verifier()
        .issue(tenant_id="tenant-1", subject="user-1", session_id="session-1", role="member")
        .token
    )
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": KEYS.active}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"iss", "aud", "sub", "tid", "sid", "role", "typ", "iat", "exp"}
    principal = verifier().verify(token)
    assert (principal.tenant_id, principal.id, principal.kind, principal.session_id) == (
        "tenant-1",
        "user-1",
        "user",
        "session-1",
    )


def test_a_kind_other_than_user_is_written_and_read() -> None:
    token = (
        verifier()
        .issue(
            tenant_id="tenant-1",
            subject="agent-1",
            session_id="token-1",
            role="member",
            kind="agent",
        )
        .token
    )
    assert jwt.decode(token, options={"verify_signature": False})["knd"] == "agent"
    assert verifier().verify(token).kind == "agent"


def test_tokens_in_the_earlier_format_still_verify() -> None:
    # Issued before the claims were trimmed: a jti, knd "user" and typ "JWT" in the header.
    earlier = forge(claims(jti="0" * 32, knd="user"), headers={"typ": "JWT"})
    assert set(jwt.get_unverified_header(earlier)) == {"alg", "kid", "typ"}
    principal = verifier().verify(earlier)
    assert (principal.tenant_id, principal.id, principal.kind) == ("tenant-1", "user-1", "user")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    header = {"alg": alg, "typ": "JWT", "kid": KEYS.active}
    refused(f"{_b64(header)}.{_b64(claims())}.")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_with_the_right_key_are_refused(algorithm: str) -> None:
    refused(forge(algorithm=algorithm))


def test_rs256_with_a_made_up_key_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(forge(key=key, algorithm="RS256"))


def test_es256_with_a_made_up_key_is_refused() -> None:
    refused(forge(key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"))


def test_hs256_signed_with_another_key_is_refused() -> None:
    refused(forge(key=b"k" * 32))


def test_embedded_jwk_is_refused_even_when_it_signs() -> None:
    attacker = b"a" * 32
    jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(attacker).rstrip(b"=").decode()}
    refused(forge(key=attacker, headers={"jwk": jwk}))
    # and even when the real key signs: a header pointing at keys is refused outright
    refused(forge(headers={"jwk": jwk}))


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_key_url_headers_are_refused(header: str) -> None:
    refused(forge(headers={header: "https://evil.example/keys.json"}))


def test_unknown_kid_is_refused() -> None:
    refused(forge(headers={"kid": "not-a-key-id"}))


def test_missing_kid_is_refused() -> None:
    token = jwt.encode(claims(), KEYS.keys[KEYS.active], algorithm="HS256")
    refused(token)


@pytest.mark.parametrize("iss", [..., "someone-else", ""])
def test_missing_or_wrong_issuer_is_refused(iss: Any) -> None:
    refused(forge(claims(iss=iss)))


@pytest.mark.parametrize("aud", [..., "another-service", ["another-service"]])
def test_missing_or_wrong_audience_is_refused(aud: Any) -> None:
    refused(forge(claims(aud=aud)))


def test_expired_token_is_refused_as_expired() -> None:
    past = int(time.time()) - 3600
    refused(forge(claims(iat=past - 900, exp=past)), ErrorCode.TOKEN_EXPIRED)


def test_a_refresh_token_is_not_an_access_token() -> None:
    refused("rt1.tenant-1." + "A" * 43)


@pytest.mark.parametrize("typ", ["refresh", "id", "agent", "", ...])
def test_any_typ_but_access_is_refused(typ: Any) -> None:
    refused(forge(claims(typ=typ)))


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "tid", "sid", "typ", "role"])
def test_each_required_claim_missing_is_refused(claim: str) -> None:
    refused(forge(claims(**{claim: ...})))


@pytest.mark.parametrize(("claim", "value"), [("role", "superuser"), ("knd", "operator")])
def test_claims_outside_their_vocabulary_are_refused(claim: str, value: str) -> None:
    refused(forge(claims(**{claim: value})))


def test_garbage_is_refused() -> None:
    for token in ["", "x", "a.b.c", "eyJ.eyJ.", "." * 3]:
        refused(token)


# -- key rotation -------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() -> None:
    before = verifier(KEYS)
    old_token = before.issue(tenant_id="t", subject="u", session_id="s", role="member").token

    rotated = KEYS.rotated()
    after = verifier(rotated)
    new_token = after.issue(tenant_id="t", subject="u", session_id="s", role="member").token

    assert rotated.active != KEYS.active
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.active
    assert after.verify(old_token).id == "u"  # nobody is logged out by the rotation
    assert after.verify(new_token).id == "u"
    with pytest.raises(AuthError):
        before.verify(new_token)  # a node that has not loaded the new key yet refuses it


def test_retiring_a_key_invalidates_only_its_tokens() -> None:
    rotated = KEYS.rotated()
    tokens = verifier(rotated)
    old_token = verifier(KEYS).issue(tenant_id="t", subject="u", session_id="s", role="member")
    new_token = tokens.issue(tenant_id="t", subject="u", session_id="s", role="member")

    tokens.use_keys(rotated.retired(KEYS.active))

    with pytest.raises(AuthError):
        tokens.verify(old_token.token)
    assert tokens.verify(new_token.token).id == "u"
    with pytest.raises(ValueError, match="active"):
        rotated.retired(rotated.active)


def test_key_sets_round_trip_through_their_json_form() -> None:
    rotated = KEYS.rotated()
    again = SigningKeys.from_json(rotated.to_json())
    assert again == rotated


# -- the boundaries use the same verifier ---------------------------------------------------


async def test_forged_tokens_are_refused_at_the_http_and_websocket_boundaries(
    server: LiveServer,
) -> None:
    tenant = await server.tenant()
    user = await server.user(tenant)
    real = await server.login(tenant, user)
    header = {
        "alg": "none",
        "typ": "JWT",
        "kid": jwt.get_unverified_header(real["access_token"])["kid"],
    }
    payload = jwt.decode(real["access_token"], options={"verify_signature": False})
    forged = f"{_b64(header)}.{_b64(payload)}."

    async with server.http() as http:
        for token in (forged, real["refresh_token"]):
            answer = await http.get(
                "/api/v1/channels", headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "unauthorized"

    ws = await server.connect(origin=None, additional_headers={"Authorization": f"Bearer {forged}"})
    await assert_closed(ws, CloseCode.UNAUTHORIZED)


def test_a_retired_key_is_refused_after_its_tokens_were_seen() -> None:
    # The header segment of a key's tokens is remembered; which key its kid names is not.
    rotated = KEYS.rotated()
    tokens = verifier(rotated)
    old_token = verifier(KEYS).issue(tenant_id="t", subject="u", session_id="s", role="member")
    assert tokens.verify(old_token.token).id == "u"
    assert tokens.verify(old_token.token).id == "u"  # its header, remembered, still verifies
    tokens.use_keys(rotated.retired(KEYS.active))
    with pytest.raises(AuthError):
        tokens.verify(old_token.token)


def test_a_tampered_token_is_refused_after_the_genuine_one_was_seen() -> None:
    genuine = forge()
    assert verifier().verify(genuine).id == "user-1"
    head, _, signature = genuine.split(".")
    changed = _b64({**claims(), "role": "owner"})
    refused(f"{head}.{changed}.{signature}")


# -- verified tokens remembered -------------------------------------------------------------


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token pyjwt decodes from here on, in order."""
    decoded: list[str] = []
    real = tokens_module._JWT.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(tokens_module._JWT, "decode", decode)
    return decoded


def test_a_verified_token_is_decoded_once_and_refused_once_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = counting_decodes(monkeypatch)
    tokens = AccessTokens(KEYS, issuer=ISSUER, audience=AUDIENCE, ttl_s=1)
    issued = tokens.issue(tenant_id="t", subject="u", session_id="s", role="member")
    first = tokens.verify(issued.token)
    assert tokens.verify(issued.token) == first
    assert decoded == [issued.token]
    while time.time() < issued.expires_at:
        time.sleep(0.05)
    with pytest.raises(AuthError) as caught:
        tokens.verify(issued.token)
    assert caught.value.code == ErrorCode.TOKEN_EXPIRED
    with pytest.raises(AuthError) as again:
        tokens.verify(issued.token)  # forgotten: pyjwt says expired too
    assert again.value.code == ErrorCode.TOKEN_EXPIRED
    assert decoded == [issued.token, issued.token]


def test_a_tampered_token_is_refused_by_the_verifier_that_remembers_the_genuine_one() -> None:
    tokens = verifier()
    genuine = forge()
    assert tokens.verify(genuine).role == "member"
    head, _, signature = genuine.split(".")
    for changed in (
        f"{head}.{_b64({**claims(), 'role': 'owner'})}.{signature}",
        f"{genuine[:-2]}{'A' if genuine[-2] != 'A' else 'B'}{genuine[-1]}",
        genuine.replace(".", ".x", 1),
    ):
        with pytest.raises(AuthError):
            tokens.verify(changed)
    assert tokens.verify(genuine).role == "member"


def test_a_remembered_token_is_refused_once_its_kid_names_another_key() -> None:
    tokens = verifier()
    token = forge()
    assert tokens.verify(token).id == "user-1"
    # The same kid, another secret (not through use_keys): the remembered key is not it.
    tokens.keys = SigningKeys(keys={KEYS.active: b"another secret " * 3}, active=KEYS.active)
    with pytest.raises(AuthError):
        tokens.verify(token)


def test_remembered_tokens_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_module, "_MAX_VERIFIED", 3)
    decoded = counting_decodes(monkeypatch)
    tokens = verifier()
    issued = [forge(claims(sub=f"user-{n}")) for n in range(5)]
    for token in issued:
        tokens.verify(token)
    for token in reversed(issued[2:]):
        tokens.verify(token)  # the newest three: remembered
    assert decoded == issued
    assert tokens.verify(issued[0]).id == "user-0"  # the oldest: decoded again
    assert decoded == [*issued, issued[0]]
