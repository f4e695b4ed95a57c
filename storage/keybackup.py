"""Key-store backups: every tenant secret and the erasure ledger in one sealed file.

The key store (``TenantKeyStore``: one 0600 ``<tenant id>.key`` per tenant, plus the erasure
ledger ``erasures.jsonl``) is what database backups deliberately do not carry. Its backups
use the database backups' container (``storage.backup.write_sealed``: the chunked
AES-256-GCM stream of ``storage/backupfile.py`` under the backup key, a JSON manifest, then
the payload) with ``keystore`` as the kind in the authenticated header, their own file
names (``baychat-keys-<UTC time>-<random>.bckeys``), directory and retention.

The payload is the files' bytes one after the other, in the manifest's order; the manifest
names each file with its size and SHA-256, and says when the copy was made, which tenants
it holds and how many ledger entries. Tenant secrets are read first and the ledger last:
a tenant whose deletion had begun (ledger entry first, then the secret destroyed) before
the copy was finished is marked deleted in the copy's own ledger, and a restore skips it.

A restore writes only into an empty directory, and only after the whole file has been
authenticated and every file checked against its checksum; it never writes the secret of
a tenant that a ledger it is given (the copy's own, the current one, the database's
deleted tenants) records as deleted.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.backup import FileFamily, read_sealed, write_sealed
from storage.backupfile import BackupError, DamagedBackupError
from storage.durable import fsync_path
from storage.ids import now_ms
from storage.keys import SECRET_BYTES, SECRET_SUFFIX, is_tenant_id, write_secret_file

KEYSTORE = FileFamily("keystore", "baychat-keys-", ".bckeys")
MANIFEST_FORMAT = "baychat-keystore-backup/1"
LEDGER_NAME = "erasures.jsonl"
_SETTLE_TRIES = 40  # a secret being created is read again for up to ~2 s
_SETTLE_S = 0.05


class KeyStoreNotEmptyError(BackupError):
    """A key-store restore refused because its target already holds something."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    name: str
    size: int
    sha256: str

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class LedgerFacts:
    entries: int
    tenant_deletions: int
    user_erasures: int
    malformed_lines: int

    @classmethod
    def of(cls, raw: bytes) -> LedgerFacts:
        entries = tenants = users = malformed = 0
        for entry in _ledger_lines(raw):
            if entry is None:
                malformed += 1
                continue
            entries += 1
            tenants += entry.get("kind") == "tenant"
            users += entry.get("kind") == "user"
        return cls(entries, tenants, users, malformed)


@dataclass(frozen=True, slots=True)
class KeystoreManifest:
    created_at_ms: int
    files: tuple[StoredFile, ...]
    ledger: LedgerFacts

    @property
    def tenant_ids(self) -> list[str]:
        return [f.name.removesuffix(SECRET_SUFFIX) for f in self.files if f.name != LEDGER_NAME]

    @property
    def payload_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_doc(self) -> dict[str, Any]:
        tenants = self.tenant_ids
        return {
            "format": MANIFEST_FORMAT,
            "created_at": datetime.fromtimestamp(self.created_at_ms / 1000, UTC).isoformat(),
            "created_at_ms": self.created_at_ms,
            "tenants": {"count": len(tenants), "ids": tenants},
            "ledger": {
                "entries": self.ledger.entries,
                "tenant_deletions": self.ledger.tenant_deletions,
                "user_erasures": self.ledger.user_erasures,
                "malformed_lines": self.ledger.malformed_lines,
            },
            "files": [f.to_doc() for f in self.files],
            "payload": {"bytes": self.payload_bytes},
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> KeystoreManifest:
        if doc.get("format") != MANIFEST_FORMAT:
            raise BackupError(f"unknown key-store manifest format {doc.get('format')!r}")
        try:
            files = tuple(
                StoredFile(str(f["name"]), int(f["bytes"]), str(f["sha256"])) for f in doc["files"]
            )
            ledger = doc["ledger"]
            manifest = cls(
                int(doc["created_at_ms"]),
                files,
                LedgerFacts(
                    int(ledger["entries"]),
                    int(ledger["tenant_deletions"]),
                    int(ledger["user_erasures"]),
                    int(ledger["malformed_lines"]),
                ),
            )
        except (KeyError, TypeError, ValueError):
            raise DamagedBackupError("key-store backup manifest is incomplete") from None
        names = [f.name for f in files]
        if len(set(names)) != len(names) or names.count(LEDGER_NAME) != 1:
            raise DamagedBackupError("key-store backup manifest lists a file twice")
        for stored in files:
            if stored.name == LEDGER_NAME:
                continue
            tenant_id = stored.name.removesuffix(SECRET_SUFFIX)
            if not stored.name.endswith(SECRET_SUFFIX) or not is_tenant_id(tenant_id):
                raise DamagedBackupError(f"key-store backup names a foreign file {stored.name!r}")
            if stored.size != SECRET_BYTES:
                raise DamagedBackupError(f"key-store backup: {stored.name} is not a tenant secret")
        return manifest


@dataclass(frozen=True, slots=True)
class KeystoreCopy:
    """An authenticated key-store backup: its manifest, the secrets and the ledger."""

    manifest: KeystoreManifest
    secrets: dict[str, bytes]  # tenant id -> secret
    ledger: bytes


# -- taking a backup ------------------------------------------------------------------


def _tenant_of(path: Path) -> str | None:
    name = path.name
    tenant_id = name.removesuffix(SECRET_SUFFIX)
    if name == tenant_id or not is_tenant_id(tenant_id):
        return None
    if path.is_symlink() or not path.is_file():
        return None
    return tenant_id


def _read_secret(path: Path) -> bytes | None:
    """The secret, or None when it vanished (its tenant was just deleted). A tenant being
    created has its file for a moment before its 32 bytes: read it again until they are
    there."""
    data = b""
    for _ in range(_SETTLE_TRIES):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) == SECRET_BYTES:
            return data
        time.sleep(_SETTLE_S)
    raise BackupError(
        f"{path.name} holds {len(data)} bytes, not a {SECRET_BYTES}-byte tenant secret"
    )


def _read_ledger(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return b""
    # Whole lines only: an entry being appended right now belongs to the next backup.
    return raw[: raw.rfind(b"\n") + 1]


def snapshot(keystore_dir: Path) -> tuple[dict[str, bytes], bytes, list[str]]:
    """The key store's secrets (tenant id -> secret), its ledger, and the names of the
    entries that are neither (left out). Secrets first, the ledger last."""
    if not keystore_dir.is_dir():
        raise BackupError(f"no key store at {keystore_dir} (BAYCHAT_KEYSTORE_DIR)")
    found: dict[str, bytes] = {}
    ignored: list[str] = []
    for path in sorted(keystore_dir.iterdir()):
        if path.name == LEDGER_NAME:
            continue
        tenant_id = _tenant_of(path)
        if tenant_id is None:
            ignored.append(path.name)
            continue
        secret = _read_secret(path)
        if secret is not None:
            found[tenant_id] = secret
    return found, _read_ledger(keystore_dir / LEDGER_NAME), ignored


def _stored(name: str, data: bytes) -> StoredFile:
    return StoredFile(name, len(data), hashlib.sha256(data).hexdigest())


def take_keystore_backup(
    keystore_dir: Path, out_dir: Path, backup_key: bytes, *, created_at_ms: int | None = None
) -> tuple[Path, KeystoreManifest, list[str]]:
    """Copy the key store into one new sealed file in ``out_dir``; return the file, its
    manifest and the key-store entries left out (not tenant secrets, not the ledger)."""
    created = created_at_ms if created_at_ms is not None else now_ms()
    found, ledger, ignored = snapshot(keystore_dir)
    blobs = [(f"{tenant_id}{SECRET_SUFFIX}", secret) for tenant_id, secret in found.items()]
    blobs.append((LEDGER_NAME, ledger))
    manifest = KeystoreManifest(
        created, tuple(_stored(name, data) for name, data in blobs), LedgerFacts.of(ledger)
    )
    path = write_sealed(
        out_dir, KEYSTORE, backup_key, created, manifest.to_doc(), (data for _, data in blobs)
    )
    return path, manifest, ignored


# -- reading one back ---------------------------------------------------------------------


def open_keystore_backup(path: Path, backup_key: bytes) -> KeystoreCopy:
    """Authenticate the whole file and check every file in it against its manifest.
    Raises ``BackupError``: not a backup, a database backup (``WrongKindError``), wrong
    key, truncated, reordered or altered, a checksum that does not match."""
    with read_sealed(path, backup_key, "keystore") as (doc, payload):
        manifest = KeystoreManifest.from_doc(doc)
        data = b"".join(payload)  # authenticated up to and including the final chunk
    if len(data) != manifest.payload_bytes:
        raise DamagedBackupError("key-store backup payload is not the size its manifest says")
    secrets: dict[str, bytes] = {}
    ledger = b""
    offset = 0
    for stored in manifest.files:
        blob = data[offset : offset + stored.size]
        offset += stored.size
        if hashlib.sha256(blob).hexdigest() != stored.sha256:
            raise DamagedBackupError(
                f"key-store backup: {stored.name} does not match the checksum in its manifest"
            )
        if stored.name == LEDGER_NAME:
            ledger = blob
        else:
            secrets[stored.name.removesuffix(SECRET_SUFFIX)] = blob
    return KeystoreCopy(manifest, secrets, ledger)


# -- restoring ----------------------------------------------------------------------------


def _ledger_lines(raw: bytes) -> Iterable[dict[str, Any] | None]:
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            yield None
            continue
        yield entry if isinstance(entry, dict) else None


def deleted_tenants(raw: bytes) -> dict[str, int]:
    """Tenant id -> when it was deleted, for every tenant deletion in a ledger."""
    return {
        str(entry["tenant_id"]): int(entry.get("at", 0))
        for entry in _ledger_lines(raw)
        if entry is not None and entry.get("kind") == "tenant" and "tenant_id" in entry
    }


@dataclass(frozen=True, slots=True)
class RestorePlan:
    secrets: dict[str, bytes]  # what will be written
    skipped_deleted: list[str]  # in the backup, but recorded as deleted
    ledger: bytes  # the ledger the restored key store starts with


def plan_restore(
    copy: KeystoreCopy,
    *,
    current_ledger: bytes = b"",
    deleted_in_database: Mapping[str, int] | None = None,
) -> RestorePlan:
    """What a restore of ``copy`` writes. The restored ledger is the copy's, then every
    entry of ``current_ledger`` it lacks, then a deletion entry for every tenant the
    database records as deleted that neither ledger has. No tenant that any of them
    records as deleted gets its secret back: a restore never undoes a crypto-shred that
    BayChat still knows about."""
    lines = [line for line in copy.ledger.splitlines() if line.strip()]
    seen = set(lines)
    for line in current_ledger.splitlines():
        if line.strip() and line not in seen:
            lines.append(line)
            seen.add(line)
    merged = b"".join(line + b"\n" for line in lines)
    deleted = deleted_tenants(merged)
    for tenant_id, at in sorted((deleted_in_database or {}).items()):
        if tenant_id not in deleted:
            entry = {"at": at, "kind": "tenant", "tenant_id": tenant_id}
            merged += (json.dumps(entry, sort_keys=True) + "\n").encode()
            deleted[tenant_id] = at
    keep = {t: s for t, s in copy.secrets.items() if t not in deleted}
    skipped = sorted(t for t in copy.secrets if t in deleted)
    return RestorePlan(keep, skipped, merged)


def check_empty(into: Path) -> None:
    """``KeyStoreNotEmptyError`` unless ``into`` is missing or an empty directory."""
    if not into.exists() and not into.is_symlink():
        return
    if not into.is_dir():
        raise KeyStoreNotEmptyError(f"{into} exists and is not a directory")
    found = sorted(p.name for p in into.iterdir())
    if found:
        raise KeyStoreNotEmptyError(
            f"the key store {into} is not empty ({len(found)} entries, e.g. {found[0]}):"
            " restore into an empty directory (move this one aside first)"
        )


def write_keystore(into: Path, plan: RestorePlan) -> None:
    """Write ``plan`` into the empty directory ``into`` (made 0700): each secret 0600,
    fsynced, the ledger last. A failure part-way removes what this call wrote."""
    check_empty(into)
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    into.chmod(0o700)
    written: list[Path] = []
    try:
        items = [(f"{t}{SECRET_SUFFIX}", s) for t, s in sorted(plan.secrets.items())]
        if plan.ledger:
            items.append((LEDGER_NAME, plan.ledger))
        for name, data in items:
            path = into / name
            if not write_secret_file(path, data):
                raise KeyStoreNotEmptyError(f"{path} appeared while the key store was restored")
            written.append(path)
        fsync_path(into)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
