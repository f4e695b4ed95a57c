"""Key material, kept away from the database.

* ``MasterKeyring``: versioned 256-bit master keys, from ``BAYCHAT_MASTER_KEYS`` or a 0600
  file under the data directory. One version is active for new writes; older ones still
  decrypt.
* ``TenantKeyStore``: one random 256-bit secret per tenant, one 0600 file each, in a
  directory that database backups do not carry. Deleting a tenant's file crypto-shreds it.

A tenant's data key is HKDF-SHA256(master key, salt = tenant secret, info = tenant id and
key version): neither the master key nor the key store alone can decrypt anything.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

from protocol.errors import BayChatError


class KeyUnavailableError(BayChatError):
    """The key needed for this operation is gone (retired version or shredded tenant)."""

    default_message = "key material unavailable"


def write_secret_file(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``data``; False if it already existed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


class MasterKeyring:
    def __init__(self, keys: dict[int, bytes], active: int) -> None:
        if active not in keys:
            raise ValueError("the active master key version is not in the keyring")
        for version, key in keys.items():
            if len(key) != 32:
                raise ValueError(f"master key version {version} is not 256 bits")
        self.keys = dict(keys)
        self.active = active

    def key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise KeyUnavailableError(f"master key version {version} is not loaded") from None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "active": self.active,
                "keys": {str(v): base64.b64encode(k).decode() for v, k in self.keys.items()},
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MasterKeyring:
        doc = json.loads(raw)
        keys = {int(v): base64.b64decode(k) for v, k in doc["keys"].items()}
        return cls(keys, int(doc["active"]))

    @classmethod
    def from_env(cls, value: str) -> MasterKeyring:
        """``BAYCHAT_MASTER_KEYS=1:<base64>,2:<base64>``; the highest version is active."""
        keys: dict[int, bytes] = {}
        for item in value.split(","):
            version, _, encoded = item.strip().partition(":")
            keys[int(version)] = base64.b64decode(encoded)
        return cls(keys, max(keys))

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKeyring:
        fresh = cls({1: secrets.token_bytes(32)}, 1)
        write_secret_file(path, fresh.to_json())
        return cls.from_json(path.read_bytes())


class TenantKeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, tenant_id: str) -> Path:
        if not tenant_id or not all(c.isalnum() or c == "-" for c in tenant_id):
            raise ValueError("malformed tenant id")
        return self.directory / f"{tenant_id}.key"

    def create(self, tenant_id: str) -> None:
        write_secret_file(self._path(tenant_id), secrets.token_bytes(32))

    def secret(self, tenant_id: str) -> bytes:
        try:
            return self._path(tenant_id).read_bytes()
        except FileNotFoundError:
            raise KeyUnavailableError("tenant key material is unavailable") from None

    def destroy(self, tenant_id: str) -> None:
        self._path(tenant_id).unlink(missing_ok=True)
