"""Backups: one encrypted, self-describing file per snapshot, and reading one back.

The sealed stream (``storage/backupfile.py``) holds a manifest and then the snapshot::

    manifest length (4, big endian) | manifest (JSON) | snapshot payload

The manifest says when and from what the backup was made (engine, schema version, row counts
per table, the highest seq of every channel, messages per master key version) and the
payload's size and SHA-256. Per-tenant key material is *not* in a backup: it lives in the key
store, which has its own backups (``storage/keybackup.py``, the same container with another
kind in its header), so deleting a tenant's key makes its messages unreadable in every
database backup too.

``write_sealed`` and ``read_sealed`` are that container, for either kind: a manifest and a
payload, written aside and renamed into place only once whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.backupfile import (
    BackupError,
    DamagedBackupError,
    Kind,
    SealedWriter,
    open_sealed,
)
from storage.durable import fsync_path
from storage.ids import now_ms
from storage.snapshot import SnapshotFacts, Snapshotter

SUFFIX = ".bcbk"
PREFIX = "baychat-"
MANIFEST_FORMAT = "baychat-backup/1"
_LEN = struct.Struct(">I")
_COPY = 1 << 20


@dataclass(frozen=True, slots=True)
class Manifest:
    created_at_ms: int
    kind: str
    payload_bytes: int
    payload_sha256: str
    facts: SnapshotFacts

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "created_at": datetime.fromtimestamp(self.created_at_ms / 1000, UTC).isoformat(),
            "created_at_ms": self.created_at_ms,
            "payload": {
                "kind": self.kind,
                "bytes": self.payload_bytes,
                "sha256": self.payload_sha256,
            },
            "database": self.facts.to_doc(),
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Manifest:
        if doc.get("format") != MANIFEST_FORMAT:
            raise BackupError(f"unknown manifest format {doc.get('format')!r}")
        payload = doc["payload"]
        return cls(
            int(doc["created_at_ms"]),
            str(payload["kind"]),
            int(payload["bytes"]),
            str(payload["sha256"]),
            SnapshotFacts.from_doc(doc["database"]),
        )


@dataclass(frozen=True, slots=True)
class FileFamily:
    """One kind of backup file: the kind in its header and how its files are named
    (``<prefix><UTC time>-<random><suffix>``). Retention considers only its own family."""

    kind: Kind
    prefix: str
    suffix: str

    def new_name(self, created_at_ms: int) -> str:
        stamp = datetime.fromtimestamp(created_at_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"{self.prefix}{stamp}-{secrets.token_hex(3)}{self.suffix}"

    def named(self, name: str) -> bool:
        return name.startswith(self.prefix) and name.endswith(self.suffix)


DATABASE = FileFamily("database", PREFIX, SUFFIX)


def backup_name(created_at_ms: int) -> str:
    return DATABASE.new_name(created_at_ms)


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_COPY):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


async def take_backup(snapshotter: Snapshotter, out_dir: Path, backup_key: bytes) -> Path:
    """Snapshot the database and seal it into ``out_dir``; return the new file. The file
    appears under its final name only once complete (written aside, fsynced, renamed)."""
    created = now_ms()
    with tempfile.TemporaryDirectory(prefix="baychat-backup-") as work:
        # The plaintext snapshot stays in a private (0700) directory for as long as it takes
        # to seal it: no more exposed than the live database it was copied from.
        raw = Path(work) / "snapshot"
        facts = await snapshotter.take(raw)
        return await asyncio.to_thread(
            _seal, raw, Manifest(created, snapshotter.kind, 0, "", facts), out_dir, backup_key
        )


def _seal(raw: Path, draft: Manifest, out_dir: Path, backup_key: bytes) -> Path:
    size, digest = _file_digest(raw)
    manifest = Manifest(draft.created_at_ms, draft.kind, size, digest, draft.facts)

    def payload() -> Iterator[bytes]:
        with raw.open("rb") as source:
            while block := source.read(_COPY):
                yield block

    return write_sealed(
        out_dir, DATABASE, backup_key, manifest.created_at_ms, manifest.to_doc(), payload()
    )


def write_sealed(
    out_dir: Path,
    family: FileFamily,
    backup_key: bytes,
    created_at_ms: int,
    manifest: dict[str, Any],
    payload: Iterable[bytes],
) -> Path:
    """Seal ``manifest`` and ``payload`` into a new file of ``family`` in ``out_dir`` (0700
    if created) and return it. The file (0600) is written under a hidden partial name,
    fsynced and renamed: a file with the final name is always whole, and a failure leaves
    nothing behind."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    encoded = json.dumps(manifest, sort_keys=True).encode()
    final = out_dir / family.new_name(created_at_ms)
    partial = out_dir / f".{final.name}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = SealedWriter(handle, backup_key, created_at_ms=created_at_ms, kind=family.kind)
            writer.write(_LEN.pack(len(encoded)) + encoded)
            for block in payload:
                writer.write(block)
            writer.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    fsync_path(out_dir)
    return final


class _Stream:
    """Reads exact byte counts out of an iterator of chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def rest(self) -> Iterator[bytes]:
        if self._buffer:
            yield self._buffer
            self._buffer = b""
        yield from self._chunks


@contextlib.contextmanager
def read_sealed(
    path: Path, backup_key: bytes, kind: Kind
) -> Iterator[tuple[dict[str, Any], Iterator[bytes]]]:
    """Open a sealed file of ``kind``: its manifest and an iterator over its payload, valid
    inside the ``with``. The payload is authenticated chunk by chunk; the iterator raises
    ``DamagedBackupError`` where the file fails and ends only after its final chunk, so a
    caller acts on the payload only once it has read all of it."""
    with path.open("rb") as handle:
        _, chunks = open_sealed(handle, backup_key, kind=kind)
        stream = _Stream(chunks)
        head = stream.read(_LEN.size)
        if len(head) < _LEN.size:
            raise DamagedBackupError("backup holds no manifest")
        (length,) = _LEN.unpack(head)
        raw = stream.read(length)
        if len(raw) < length:
            raise DamagedBackupError("backup ends inside its manifest")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise DamagedBackupError("backup manifest is not JSON") from None
        yield doc, stream.rest()


def open_backup(path: Path, backup_key: bytes, payload_to: Path) -> Manifest:
    """Authenticate the whole backup, write its payload to ``payload_to`` and return its
    manifest. Raises ``BackupError`` (not a backup, a key-store backup, wrong key,
    truncated, reordered or altered, payload checksum mismatch); nothing written to
    ``payload_to`` is usable then."""
    with read_sealed(path, backup_key, "database") as (doc, payload):
        manifest = Manifest.from_doc(doc)
        digest = hashlib.sha256()
        size = 0
        fd = os.open(payload_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for block in payload:
                digest.update(block)
                size += len(block)
                out.write(block)
    if size != manifest.payload_bytes or digest.hexdigest() != manifest.payload_sha256:
        raise DamagedBackupError("backup payload does not match the checksum in its manifest")
    return manifest


def read_manifest(path: Path, backup_key: bytes) -> Manifest:
    """Authenticate the whole file and return its manifest (``baychat backup verify``)."""
    with tempfile.TemporaryDirectory(prefix="baychat-verify-") as work:
        return open_backup(path, backup_key, Path(work) / "payload")
