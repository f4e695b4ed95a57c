"""Message encryption at rest: AES-256-GCM envelopes under per-tenant derived keys.

Envelope (bytes): ``0x01`` format version | key version (4 bytes, big endian) |
nonce (12 random bytes) | ciphertext with its 16-byte tag.

The associated data binds the envelope to its tenant, channel, message id and key version,
so a ciphertext copied into another row, channel or tenant fails authentication.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.keys import KeyUnavailableError, MasterKeyring, TenantKeyStore

FORMAT_VERSION = 1
_HEADER = struct.Struct(">BI")
_NONCE_BYTES = 12


class DecryptionError(KeyUnavailableError):
    default_message = "message could not be decrypted"


class MessageCipher:
    def __init__(self, keyring: MasterKeyring, keystore: TenantKeyStore) -> None:
        self.keyring = keyring
        self.keystore = keystore
        # Derivation costs an HKDF and a file read: do it once per tenant and version.
        self._aead: dict[tuple[str, int], AESGCM] = {}

    def _cipher(self, tenant_id: str, version: int) -> AESGCM:
        aead = self._aead.get((tenant_id, version))
        if aead is None:
            hkdf = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=self.keystore.secret(tenant_id),
                info=b"baychat/message-key/v1|" + tenant_id.encode() + b"|" + str(version).encode(),
            )
            aead = AESGCM(hkdf.derive(self.keyring.key(version)))
            self._aead[(tenant_id, version)] = aead
        return aead

    def forget_tenant(self, tenant_id: str) -> None:
        for key in [k for k in self._aead if k[0] == tenant_id]:
            del self._aead[key]

    def use_keyring(self, keyring: MasterKeyring) -> None:
        """Switch to a reloaded keyring. Derived keys of versions it no longer holds
        (retired) are dropped; the others stay valid, since a version's key never changes."""
        self.keyring = keyring
        for key in [k for k in self._aead if k[1] not in keyring.keys]:
            del self._aead[key]

    def forget_shredded(self) -> list[str]:
        """Drop cached keys of tenants whose key material was destroyed (by another process:
        ``baychat tenant delete``); return their ids."""
        gone = sorted({t for t, _ in self._aead if not self.keystore.has(t)})
        for tenant_id in gone:
            self.forget_tenant(tenant_id)
        return gone

    @staticmethod
    def _aad(tenant_id: str, channel_id: str, message_id: str, version: int) -> bytes:
        return f"baychat/v1|{tenant_id}|{channel_id}|{message_id}|{version}".encode()

    def encrypt(
        self, tenant_id: str, channel_id: str, message_id: str, plaintext: bytes
    ) -> tuple[int, bytes]:
        version = self.keyring.active
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher(tenant_id, version).encrypt(
            nonce, plaintext, self._aad(tenant_id, channel_id, message_id, version)
        )
        return version, _HEADER.pack(FORMAT_VERSION, version) + nonce + sealed

    def encrypt_many(
        self, tenant_id: str, items: Sequence[tuple[str, str, bytes]]
    ) -> tuple[int, list[bytes]]:
        """``encrypt`` for many ``(channel_id, message_id, plaintext)`` of one tenant, under
        one key version. The same envelopes; the nonces come from one ``os.urandom`` call
        (a system call per message was a tenth of the persistence worker's CPU)."""
        version = self.keyring.active
        aead = self._cipher(tenant_id, version)
        nonces = os.urandom(_NONCE_BYTES * len(items))
        header = _HEADER.pack(FORMAT_VERSION, version)
        prefix, suffix = f"baychat/v1|{tenant_id}|", f"|{version}"
        envelopes = []
        for i, (channel_id, message_id, plaintext) in enumerate(items):
            nonce = nonces[i * _NONCE_BYTES : (i + 1) * _NONCE_BYTES]
            aad = f"{prefix}{channel_id}|{message_id}{suffix}".encode()
            envelopes.append(header + nonce + aead.encrypt(nonce, plaintext, aad))
        return version, envelopes

    def decrypt(self, tenant_id: str, channel_id: str, message_id: str, envelope: bytes) -> bytes:
        if len(envelope) < _HEADER.size + _NONCE_BYTES + 16:
            raise DecryptionError()
        fmt, version = _HEADER.unpack_from(envelope)
        if fmt != FORMAT_VERSION:
            raise DecryptionError("unknown envelope format")
        nonce = envelope[_HEADER.size : _HEADER.size + _NONCE_BYTES]
        try:
            return self._cipher(tenant_id, version).decrypt(
                nonce,
                envelope[_HEADER.size + _NONCE_BYTES :],
                self._aad(tenant_id, channel_id, message_id, version),
            )
        except InvalidTag:
            raise DecryptionError() from None

    @staticmethod
    def key_version_of(envelope: bytes) -> int:
        return int(_HEADER.unpack_from(envelope)[1])
