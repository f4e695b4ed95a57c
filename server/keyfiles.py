"""Where this deployment's keys live, and reading and writing them for operator commands.

Master keys and JWT signing keys come either from the environment (``BAYCHAT_MASTER_KEYS``,
``BAYCHAT_JWT_KEYS``: the deployment owns them, and a rotation prints the new value to put
there) or from 0600 files under ``<data dir>/secrets`` (a rotation rewrites the file
atomically and running servers reload it). The backup key comes from ``BAYCHAT_BACKUP_KEY``
or ``<data dir>/secrets/backup.key``; it never goes into a backup.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from server.auth.tokens import SigningKeys
from server.config import Settings
from storage.erasure import ErasureLedger
from storage.keys import (
    KeyringError,
    MasterKeyring,
    file_lock,
    replace_secret_file,
    write_secret_file,
)


def master_keys_path(settings: Settings) -> Path:
    return settings.secrets_dir / "master-keys.json"


def jwt_keys_path(settings: Settings) -> Path:
    return settings.secrets_dir / "jwt-keys.json"


def backup_key_path(settings: Settings) -> Path:
    return settings.secrets_dir / "backup.key"


def erasure_ledger(settings: Settings) -> ErasureLedger:
    """Kept with the tenant keys: outside the database, in the store every node shares."""
    return ErasureLedger(settings.keystore_dir / "erasures.jsonl")


@contextlib.contextmanager
def editing_master_keys(settings: Settings) -> Iterator[MasterKeyring]:
    """The file keyring, locked against other operator commands while it is changed."""
    if settings.master_keys:
        raise KeyringError("the master keys come from BAYCHAT_MASTER_KEYS")
    path = master_keys_path(settings)
    with file_lock(path):
        yield MasterKeyring.load_or_create(path)


def save_master_keys(settings: Settings, keyring: MasterKeyring) -> None:
    replace_secret_file(master_keys_path(settings), keyring.to_json())


@contextlib.contextmanager
def editing_jwt_keys(settings: Settings) -> Iterator[SigningKeys]:
    if settings.jwt_keys:
        raise KeyringError("the JWT keys come from BAYCHAT_JWT_KEYS")
    path = jwt_keys_path(settings)
    with file_lock(path):
        yield SigningKeys.load_or_create(path)


def save_jwt_keys(settings: Settings, keys: SigningKeys) -> None:
    replace_secret_file(jwt_keys_path(settings), keys.to_json())


def backup_key(settings: Settings, *, create: bool) -> bytes:
    """The 256-bit backup key. ``create``: generate the file on first use (backup), never
    on restore, where a missing key is an error worth seeing."""
    if settings.backup_key:
        try:
            key = base64.b64decode(settings.backup_key, validate=True)
        except binascii.Error:
            raise KeyringError("BAYCHAT_BACKUP_KEY is not valid base64") from None
    else:
        path = backup_key_path(settings)
        if create:
            write_secret_file(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
        try:
            key = base64.b64decode(path.read_bytes().strip(), validate=True)
        except FileNotFoundError:
            raise KeyringError(
                f"no backup key: set BAYCHAT_BACKUP_KEY or put the key in {path}"
            ) from None
    if len(key) != 32:
        raise KeyringError("the backup key must be 32 bytes (base64 of 256 random bits)")
    return key
