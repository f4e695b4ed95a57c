"""The backup file format: a header, then a plaintext stream sealed in AES-256-GCM chunks.

Layout (integers big endian)::

    header  = magic (8) | format (1) | chunk size (4) | created at, unix ms (8)
              | key id (8) | salt (32) | nonce prefix (8)                       = 69 bytes
    chunk i = AES-256-GCM(file key, nonce = nonce prefix | i (4),
                          plaintext = next `chunk size` bytes of the stream (the last one
                          shorter, possibly empty),
                          associated data = header | i (8) | final (1))

The magic names the file's kind: ``BAYCHBK\0`` a database backup (``storage/backup.py``),
``BAYCHKS\0`` a key-store backup (``storage/keybackup.py``). It is part of the header, so of
every chunk's associated data: a kind changed in the header fails to authenticate, and a
reader asking for one kind refuses the other by name (``WrongKindError``) before it
decrypts anything.

The design is the one of Tink's streaming AEAD and age's STREAM: a fresh file key
``HKDF-SHA256(backup key, salt, "baychat/backup/v1/file-key")`` per file (so nonces never
repeat under one key), the chunk index and a final-chunk flag in every chunk's associated
data (a reordered, dropped or duplicated chunk and a stream cut at a chunk boundary fail to
authenticate), and the whole header in every chunk's associated data (an edited header fails
too). The key id (``HKDF(backup key, "baychat/backup/v1/key-id")``, 8 bytes) only tells a
wrong key from a damaged file; it reveals nothing about the key.

Readers release no plaintext they have not authenticated, but a stream's end is known only
at the final chunk: callers that act on the content (restore) read it all first.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Kind = Literal["database", "keystore"]
MAGIC = b"BAYCHBK\x00"  # a database backup
KEYSTORE_MAGIC = b"BAYCHKS\x00"  # a key-store backup
_KINDS: dict[bytes, Kind] = {MAGIC: "database", KEYSTORE_MAGIC: "keystore"}
_MAGICS: dict[Kind, bytes] = {kind: magic for magic, kind in _KINDS.items()}
# What each kind is called, and the command that restores it, for the wrong-kind error.
_ABOUT: dict[Kind, tuple[str, str]] = {
    "database": ("a database backup", "baychat restore"),
    "keystore": ("a key-store backup", "baychat keys restore"),
}
FORMAT = 1
CHUNK_SIZE = 1 << 20
_HEADER = struct.Struct(">8sBIQ8s32s8s")
HEADER_SIZE = _HEADER.size
_TAG = 16


class BackupError(Exception):
    """A backup file that cannot be used; the message says why, for an operator."""


class NotABackupError(BackupError):
    pass


class WrongKeyError(BackupError):
    pass


class DamagedBackupError(BackupError):
    """Truncated, reordered or altered."""


class WrongKindError(BackupError):
    """A BayChat backup of another kind (a key-store backup handed to the database restore,
    or the other way round)."""


@dataclass(frozen=True, slots=True)
class Header:
    chunk_size: int
    created_at_ms: int
    key_id: bytes
    salt: bytes
    nonce_prefix: bytes
    kind: Kind = "database"

    def pack(self) -> bytes:
        return _HEADER.pack(
            _MAGICS[self.kind],
            FORMAT,
            self.chunk_size,
            self.created_at_ms,
            self.key_id,
            self.salt,
            self.nonce_prefix,
        )


def _derive(key: bytes, info: bytes, salt: bytes | None, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def key_id(backup_key: bytes) -> bytes:
    return _derive(backup_key, b"baychat/backup/v1/key-id", None, 8)


def read_header(handle: BinaryIO) -> Header:
    """Parse the header; ``NotABackupError`` for anything that is not a BayChat backup."""
    raw = handle.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE or raw[: len(MAGIC)] not in _KINDS:
        raise NotABackupError("not a BayChat backup file")
    magic, fmt, chunk_size, created, kid, salt, prefix = _HEADER.unpack(raw)
    if fmt != FORMAT:
        raise NotABackupError(f"unknown backup format version {fmt}")
    if not 0 < chunk_size <= 64 << 20:
        raise NotABackupError("backup header has an impossible chunk size")
    return Header(chunk_size, created, kid, salt, prefix, _KINDS[magic])


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if final else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


class SealedWriter:
    """Writes the header, then ``write`` data in sealed chunks; ``close`` seals the final
    chunk. Not closing leaves a file every reader refuses as truncated."""

    def __init__(
        self,
        handle: BinaryIO,
        backup_key: bytes,
        *,
        created_at_ms: int,
        chunk_size: int = CHUNK_SIZE,
        kind: Kind = "database",
    ) -> None:
        salt = os.urandom(32)
        self.header = Header(
            chunk_size, created_at_ms, key_id(backup_key), salt, os.urandom(8), kind
        )
        self._packed = self.header.pack()
        self._aead = AESGCM(_derive(backup_key, b"baychat/backup/v1/file-key", salt, 32))
        self._handle = handle
        self._buffer = bytearray()
        self._index = 0
        handle.write(self._packed)

    def write(self, data: bytes) -> None:
        self._buffer += data
        size = self.header.chunk_size
        # Keep at least one byte back: the last chunk must be sealed as final by close().
        while len(self._buffer) > size:
            self._seal(bytes(self._buffer[:size]), final=False)
            del self._buffer[:size]

    def close(self) -> None:
        self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()

    def _seal(self, chunk: bytes, *, final: bool) -> None:
        if self._index >= 2**32:
            raise BackupError("backup too large for its chunk size")
        nonce = _nonce(self.header.nonce_prefix, self._index)
        self._handle.write(self._aead.encrypt(nonce, chunk, _aad(self._packed, self._index, final)))
        self._index += 1


def open_sealed(
    handle: BinaryIO, backup_key: bytes, *, kind: Kind = "database"
) -> tuple[Header, Iterator[bytes]]:
    """The header and an iterator of authenticated plaintext chunks. The iterator raises
    ``DamagedBackupError`` at the first chunk that fails; it ends only after the final one.
    ``WrongKindError`` for a BayChat backup of another ``kind``."""
    header = read_header(handle)
    if header.kind != kind:
        found, restored_by = _ABOUT[header.kind]
        raise WrongKindError(
            f"this is {found}, not {_ABOUT[kind][0]}: restore it with `{restored_by}`"
        )
    if header.key_id != key_id(backup_key):
        raise WrongKeyError(
            f"this backup was made with another backup key (key id {header.key_id.hex()},"
            f" the configured key has id {key_id(backup_key).hex()})"
        )
    aead = AESGCM(_derive(backup_key, b"baychat/backup/v1/file-key", header.salt, 32))
    return header, _chunks(handle, header, aead)


def _chunks(handle: BinaryIO, header: Header, aead: AESGCM) -> Iterator[bytes]:
    packed = header.pack()
    sealed_size = header.chunk_size + _TAG
    index = 0
    current = handle.read(sealed_size)
    while True:
        if len(current) < _TAG:
            raise DamagedBackupError(
                f"backup is truncated: it ends inside chunk {index}, before its final chunk"
            )
        following = handle.read(sealed_size) if len(current) == sealed_size else b""
        final = not following
        nonce = _nonce(header.nonce_prefix, index)
        try:
            yield aead.decrypt(nonce, current, _aad(packed, index, final))
        except InvalidTag:
            raise _diagnose(aead, nonce, current, packed, index, final) from None
        if final:
            if handle.read(1):
                raise DamagedBackupError("backup has data after its final chunk")
            return
        current = following
        index += 1


def _diagnose(
    aead: AESGCM, nonce: bytes, chunk: bytes, packed: bytes, index: int, final: bool
) -> DamagedBackupError:
    if final:
        try:
            aead.decrypt(nonce, chunk, _aad(packed, index, False))
        except InvalidTag:
            return DamagedBackupError(
                f"backup is truncated or altered: its last chunk ({index}) fails authentication"
            )
        return DamagedBackupError(
            f"backup is truncated: it ends after chunk {index}, before its final chunk"
        )
    return DamagedBackupError(
        f"backup is damaged: chunk {index} fails authentication (altered or reordered)"
    )
