"""AES-256-GCM envelopes: fresh nonces, bound to tenant, channel, message and key version."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from storage.crypto import DecryptionError, MessageCipher
from storage.keys import KeyUnavailableError, MasterKeyring, TenantKeyStore


@pytest.fixture
def cipher(tmp_path: Path) -> MessageCipher:
    keystore = TenantKeyStore(tmp_path / "keys")
    for tenant in ("tenant-a", "tenant-b"):
        keystore.create(tenant)
    return MessageCipher(MasterKeyring({1: secrets.token_bytes(32)}, 1), keystore)


def test_round_trip_and_envelope_layout(cipher: MessageCipher) -> None:
    version, envelope = cipher.encrypt("tenant-a", "ch", "m1", b"hello")
    assert version == 1
    assert envelope[0] == 1  # format version
    assert MessageCipher.key_version_of(envelope) == 1
    assert b"hello" not in envelope
    assert cipher.decrypt("tenant-a", "ch", "m1", envelope) == b"hello"


def test_every_encryption_uses_a_fresh_nonce(cipher: MessageCipher) -> None:
    envelopes = {cipher.encrypt("tenant-a", "ch", "m1", b"same")[1] for _ in range(50)}
    nonces = {e[5:17] for e in envelopes}
    assert len(nonces) == 50


@pytest.mark.parametrize(
    ("tenant", "channel", "message"),
    [("tenant-b", "ch", "m1"), ("tenant-a", "other", "m1"), ("tenant-a", "ch", "m2")],
)
def test_a_ciphertext_moved_elsewhere_fails(
    cipher: MessageCipher, tenant: str, channel: str, message: str
) -> None:
    _, envelope = cipher.encrypt("tenant-a", "ch", "m1", b"secret")
    with pytest.raises(DecryptionError):
        cipher.decrypt(tenant, channel, message, envelope)


def test_tampered_or_truncated_envelopes_fail(cipher: MessageCipher) -> None:
    _, envelope = cipher.encrypt("tenant-a", "ch", "m1", b"secret")
    flipped = bytearray(envelope)
    flipped[-1] ^= 1
    for bad in (bytes(flipped), envelope[:20], b"\x02" + envelope[1:]):
        with pytest.raises(DecryptionError):
            cipher.decrypt("tenant-a", "ch", "m1", bad)


def test_old_key_versions_still_decrypt_after_rotation(tmp_path: Path) -> None:
    keystore = TenantKeyStore(tmp_path / "keys")
    keystore.create("t")
    v1 = secrets.token_bytes(32)
    old = MessageCipher(MasterKeyring({1: v1}, 1), keystore)
    _, envelope = old.encrypt("t", "c", "m", b"before rotation")
    rotated = MessageCipher(MasterKeyring({1: v1, 2: secrets.token_bytes(32)}, 2), keystore)
    assert rotated.decrypt("t", "c", "m", envelope) == b"before rotation"
    version, fresh = rotated.encrypt("t", "c", "m2", b"after")
    assert version == 2
    assert MessageCipher.key_version_of(fresh) == 2


def test_destroying_tenant_key_material_makes_its_messages_unreadable(tmp_path: Path) -> None:
    keystore = TenantKeyStore(tmp_path / "keys")
    keystore.create("t")
    ring = MasterKeyring({1: secrets.token_bytes(32)}, 1)
    _, envelope = MessageCipher(ring, keystore).encrypt("t", "c", "m", b"gone soon")
    keystore.destroy("t")
    with pytest.raises(KeyUnavailableError):
        MessageCipher(ring, keystore).decrypt("t", "c", "m", envelope)


def test_secret_files_are_private(tmp_path: Path) -> None:
    keystore = TenantKeyStore(tmp_path / "keys")
    keystore.create("t")
    ring_path = tmp_path / "secrets" / "master-keys.json"
    MasterKeyring.load_or_create(ring_path)
    for path in (tmp_path / "keys" / "t.key", ring_path):
        assert path.stat().st_mode & 0o777 == 0o600
    # A second start reads the same key rather than making a new one.
    assert (
        MasterKeyring.load_or_create(ring_path).keys
        == MasterKeyring.from_json(ring_path.read_bytes()).keys
    )


def test_encrypt_many_makes_the_envelopes_encrypt_makes(cipher: MessageCipher) -> None:
    items = [("ch", f"m{i}", f"body {i}".encode()) for i in range(300)]
    version, envelopes = cipher.encrypt_many("tenant-a", items)
    assert version == cipher.keyring.active
    assert len({e[5:17] for e in envelopes}) == len(items)  # a fresh nonce each
    for (channel, message_id, body), envelope in zip(items, envelopes, strict=True):
        assert cipher.decrypt("tenant-a", channel, message_id, envelope) == body
        assert MessageCipher.key_version_of(envelope) == version
    with pytest.raises(DecryptionError):  # bound to its own message id
        cipher.decrypt("tenant-a", "ch", "m1", envelopes[0])
