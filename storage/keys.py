"""Key material, kept away from the database.

* ``MasterKeyring``: versioned 256-bit master keys, from ``BAYCHAT_MASTER_KEYS`` or a 0600
  file under the data directory. One version is active for new writes; older ones still
  decrypt. A rotation adds the next version as *pending* with an activation time, so every
  node has loaded it (and can decrypt with it) before any node encrypts with it.
* ``TenantKeyStore``: one random 256-bit secret per tenant, one 0600 file each, in a
  directory that database backups do not carry. Deleting a tenant's file crypto-shreds it.

A tenant's data key is HKDF-SHA256(master key, salt = tenant secret, info = tenant id and
key version): neither the master key nor the key store alone can decrypt anything.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import BayChatError
from storage.durable import fsync_path


class KeyUnavailableError(BayChatError):
    """The key needed for this operation is gone (retired version or shredded tenant)."""

    default_message = "key material unavailable"


class KeyringError(ValueError):
    """An operator's key operation that cannot be done as asked (the message says why)."""


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


def replace_secret_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (mode 0600): readers see the old file or the
    new one, never a torn one, and a crash leaves one of the two."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of a key file between operator commands."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Pending:
    """A key version loaded everywhere but not yet used for new writes before ``at``."""

    version: int
    at: float  # unix seconds


class MasterKeyring:
    def __init__(self, keys: dict[int, bytes], active: int, pending: Pending | None = None) -> None:
        if active not in keys:
            raise ValueError("the active master key version is not in the keyring")
        if pending is not None and (pending.version not in keys or pending.version <= active):
            raise ValueError("the pending master key version must be a newer loaded version")
        for version, key in keys.items():
            if len(key) != 32:
                raise ValueError(f"master key version {version} is not 256 bits")
        self.keys = dict(keys)
        self._active = active
        self.pending = pending

    @property
    def active(self) -> int:
        """The version new writes use now: the pending one once its time has come."""
        pending = self.pending
        if pending is not None and time.time() >= pending.at:
            return pending.version
        return self._active

    def key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise KeyUnavailableError(f"master key version {version} is not loaded") from None

    def settled(self) -> MasterKeyring:
        """The same keyring with a pending version whose time has come made plainly active."""
        pending = self.pending
        if pending is not None and time.time() >= pending.at:
            return MasterKeyring(self.keys, pending.version)
        return self

    def rotated(self, *, grace_s: float) -> MasterKeyring:
        """A keyring with a new random version that becomes active ``grace_s`` from now."""
        current = self.settled()
        if current.pending is not None:
            raise KeyringError(
                f"version {current.pending.version} is already pending activation; "
                "wait until it is active before rotating again"
            )
        version = max(self.keys) + 1
        keys = {**self.keys, version: secrets.token_bytes(32)}
        return MasterKeyring(keys, current.active, Pending(version, time.time() + grace_s))

    def without(self, version: int) -> MasterKeyring:
        """The keyring with ``version`` removed (retired)."""
        current = self.settled()
        if version not in self.keys:
            raise KeyringError(f"master key version {version} is not in the keyring")
        if version == current.active or (current.pending and current.pending.version == version):
            raise KeyringError(f"master key version {version} is in use for new writes")
        keys = {v: k for v, k in self.keys.items() if v != version}
        return MasterKeyring(keys, current._active, current.pending)

    def to_json(self) -> bytes:
        doc: dict[str, object] = {
            "active": self._active,
            "keys": {str(v): base64.b64encode(k).decode() for v, k in self.keys.items()},
        }
        if self.pending is not None:
            doc["pending"] = {"version": self.pending.version, "at": self.pending.at}
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MasterKeyring:
        doc = json.loads(raw)
        keys = {int(v): base64.b64decode(k) for v, k in doc["keys"].items()}
        pending = doc.get("pending")
        return cls(
            keys,
            int(doc["active"]),
            Pending(int(pending["version"]), float(pending["at"])) if pending else None,
        )

    def to_env(self) -> str:
        """The ``BAYCHAT_MASTER_KEYS`` value for this keyring (see ``from_env``)."""
        items = []
        for version in sorted(self.keys):
            item = f"{version}:{base64.b64encode(self.keys[version]).decode()}"
            if self.pending is not None and self.pending.version == version:
                item += f"@{int(self.pending.at)}"
            items.append(item)
        return ",".join(items)

    @classmethod
    def from_env(cls, value: str) -> MasterKeyring:
        """``BAYCHAT_MASTER_KEYS=1:<base64>,2:<base64>``; the highest version is active. A
        version written ``2:<base64>@<unix seconds>`` is pending until that time (a rolling
        deploy hands it to every node before any node encrypts with it)."""
        keys: dict[int, bytes] = {}
        pending: Pending | None = None
        for item in value.split(","):
            version, _, encoded = item.strip().partition(":")
            encoded, _, at = encoded.partition("@")
            keys[int(version)] = base64.b64decode(encoded)
            if at:
                pending = Pending(int(version), float(at))
        newest = max(keys)
        if pending is not None and pending.version != newest:
            raise ValueError("only the newest master key version can be pending")
        active = max(v for v in keys if pending is None or v != pending.version)
        return cls(keys, active, pending)

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKeyring:
        fresh = cls({1: secrets.token_bytes(32)}, 1)
        write_secret_file(path, fresh.to_json())
        return cls.from_json(path.read_bytes())


SECRET_SUFFIX = ".key"  # noqa: S105 - a file name suffix
SECRET_BYTES = 32
_CHECKED_PATHS = 10_000


def is_tenant_id(tenant_id: str) -> bool:
    """What a key-store file name may hold: letters, digits and dashes, nothing else."""
    return bool(tenant_id) and all(c.isalnum() or c == "-" for c in tenant_id)


class TenantKeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._checked: dict[str, str] = {}  # tenant id -> its key file's path, for ``has``

    def _path(self, tenant_id: str) -> Path:
        if not is_tenant_id(tenant_id):
            raise ValueError("malformed tenant id")
        return self.directory / f"{tenant_id}{SECRET_SUFFIX}"

    def create(self, tenant_id: str) -> None:
        write_secret_file(self._path(tenant_id), secrets.token_bytes(SECRET_BYTES))

    def secret(self, tenant_id: str) -> bytes:
        try:
            return self._path(tenant_id).read_bytes()
        except FileNotFoundError:
            raise KeyUnavailableError("tenant key material is unavailable") from None

    def has(self, tenant_id: str) -> bool:
        # Asked for every tenant of every persisted batch (a deleted tenant's messages in
        # flight are dropped): still one stat of the file each time, so a deletion by
        # another process is seen at once, but of a path string remembered per tenant
        # rather than a Path validated and built again (bounded like the ids it keeps).
        path = self._checked.get(tenant_id)
        if path is None:
            path = str(self._path(tenant_id))
            if len(self._checked) >= _CHECKED_PATHS:
                self._checked.clear()
            self._checked[tenant_id] = path
        return os.path.exists(path)

    def destroy(self, tenant_id: str) -> None:
        """Delete the tenant's secret (and make the deletion durable). Copies in key-store
        backups live until those backups are pruned: see docs/OPERATIONS.md."""
        path = self._path(tenant_id)
        path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_path(path.parent)
