"""Key-store backups: a whole, checked copy of every tenant secret and the erasure ledger,
restored only into an empty directory, never giving back a deleted tenant's secret."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.backup import read_manifest, take_backup, write_sealed
from storage.backupfile import (
    CHUNK_SIZE,
    HEADER_SIZE,
    BackupError,
    DamagedBackupError,
    NotABackupError,
    WrongKeyError,
    WrongKindError,
)
from storage.erasure import ErasureLedger
from storage.keybackup import (
    KEYSTORE,
    KeyStoreNotEmptyError,
    open_keystore_backup,
    plan_restore,
    take_keystore_backup,
    write_keystore,
)
from storage.keys import TenantKeyStore
from storage.snapshot import snapshotter_for
from tests.opsdata import sqlite_store

KEY = os.urandom(32)
SEALED = CHUNK_SIZE + 16


def key_store(directory: Path, *tenants: str) -> TenantKeyStore:
    store = TenantKeyStore(directory)
    for tenant in tenants:
        store.create(tenant)
    return store


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_round_trip_is_byte_identical_and_private(tmp_path: Path) -> None:
    live = tmp_path / "keys"
    key_store(live, "t-1", "t-2", "t-3")
    ErasureLedger(live / "erasures.jsonl").record("user", "t-1", "u-9")
    (live / ".erasures.jsonl.lock").write_bytes(b"")  # not key material: left out, named
    path, manifest, ignored = take_keystore_backup(live, tmp_path / "out", KEY)

    assert path.name.startswith("baychat-keys-")
    assert path.name.endswith(".bckeys")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ignored == [".erasures.jsonl.lock"]
    doc = manifest.to_doc()
    assert doc["tenants"] == {"count": 3, "ids": ["t-1", "t-2", "t-3"]}
    assert doc["ledger"]["entries"] == doc["ledger"]["user_erasures"] == 1
    for secret in (live / "t-1.key").read_bytes(), b"u-9":
        assert secret not in path.read_bytes()

    copy = open_keystore_backup(path, KEY)
    assert copy.manifest == manifest
    restored = tmp_path / "restored"
    write_keystore(restored, plan_restore(copy))

    expected = files(live)
    del expected[".erasures.jsonl.lock"]
    assert files(restored) == expected
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    for entry in restored.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry.name


def test_no_partial_file_is_left_under_a_final_name(tmp_path: Path) -> None:
    live = tmp_path / "keys"
    key_store(live, "t-1")
    (live / "t-2.key").write_bytes(b"short")  # a secret that never gets its 32 bytes
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BackupError, match=r"t-2\.key holds 5 bytes"):
        take_keystore_backup(live, out, KEY)
    assert list(out.iterdir()) == []

    def failing() -> Iterator[bytes]:
        yield os.urandom(CHUNK_SIZE * 2)  # two chunks already sealed and written
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_sealed(out, KEYSTORE, KEY, 1, {"format": "x"}, failing())
    assert list(out.iterdir()) == []


def test_a_secret_being_created_is_waited_for(tmp_path: Path) -> None:
    live = tmp_path / "keys"
    key_store(live, "t-1")
    growing = live / "t-2.key"
    growing.write_bytes(b"")  # created, not yet written, as write_secret_file does it

    def finish() -> None:
        time.sleep(0.2)
        growing.write_bytes(os.urandom(32))

    writer = threading.Thread(target=finish)
    writer.start()
    try:
        _, manifest, _ = take_keystore_backup(live, tmp_path / "out", KEY)
    finally:
        writer.join()
    assert manifest.tenant_ids == ["t-1", "t-2"]


def test_a_missing_key_store_is_an_error_not_an_empty_backup(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no key store"):
        take_keystore_backup(tmp_path / "nowhere", tmp_path / "out", KEY)


def big_key_store(tmp_path: Path) -> Path:
    """A key store whose backup spans three chunks (a long erasure ledger)."""
    live = tmp_path / "keys"
    key_store(live, "t-1", "t-2")
    line = json.dumps({"at": 1, "kind": "user", "tenant_id": "t-1", "user_id": "u" * 40})
    lines = (2 * CHUNK_SIZE) // len(line) + 100
    (live / "erasures.jsonl").write_text((line + "\n") * lines)
    path, _, _ = take_keystore_backup(live, tmp_path / "out", KEY)
    assert path.stat().st_size > HEADER_SIZE + 2 * SEALED
    return path


def damaged_copies(path: Path, tmp_path: Path) -> dict[str, tuple[Path, type[BackupError]]]:
    blob = path.read_bytes()
    header, rest = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    chunks = [rest[:SEALED], rest[SEALED : 2 * SEALED], rest[2 * SEALED :]]
    variants = {
        "truncated": blob[: HEADER_SIZE + 2 * SEALED],
        "cut inside a chunk": blob[:-7],
        "reordered": header + chunks[1] + chunks[0] + chunks[2],
        "altered": blob[:100] + bytes([blob[100] ^ 1]) + blob[101:],
        "appended": blob + b"more",
        "foreign": b"#!/bin/sh\necho not a backup\n" * 10,
    }
    out: dict[str, tuple[Path, type[BackupError]]] = {}
    for name, data in variants.items():
        bad = tmp_path / f"baychat-keys-{name.replace(' ', '-')}.bckeys"
        bad.write_bytes(data)
        out[name] = (bad, NotABackupError if name == "foreign" else DamagedBackupError)
    return out


def test_damaged_files_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = big_key_store(tmp_path)
    target = tmp_path / "restored"
    for name, (bad, error) in damaged_copies(path, tmp_path).items():
        with pytest.raises(error):
            open_keystore_backup(bad, KEY)
        assert not target.exists(), name
    with pytest.raises(WrongKeyError, match="another backup key"):
        open_keystore_backup(path, os.urandom(32))
    assert len(open_keystore_backup(path, KEY).secrets) == 2


async def test_the_two_kinds_refuse_each_other(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    try:
        await store.tenants.create("acme")
        database = await take_backup(
            snapshotter_for(f"sqlite:///{tmp_path / 'baychat.db'}"), tmp_path / "db", KEY
        )
    finally:
        await store.close()
    with pytest.raises(WrongKindError, match="database backup, not a key-store backup"):
        open_keystore_backup(database, KEY)
    keystore, _, _ = take_keystore_backup(tmp_path / "keys", tmp_path / "ks", KEY)
    with pytest.raises(WrongKindError, match="`baychat keys restore`"):
        read_manifest(keystore, KEY)


def test_a_non_empty_target_is_refused_untouched(tmp_path: Path) -> None:
    live = tmp_path / "keys"
    key_store(live, "t-1")
    path, _, _ = take_keystore_backup(live, tmp_path / "out", KEY)
    plan = plan_restore(open_keystore_backup(path, KEY))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "t-7.key").write_bytes(b"x" * 32)
    with pytest.raises(KeyStoreNotEmptyError, match="not empty"):
        write_keystore(occupied, plan)
    assert files(occupied) == {"t-7.key": b"x" * 32}
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(KeyStoreNotEmptyError, match="not a directory"):
        write_keystore(a_file, plan)
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    write_keystore(empty, plan)  # an existing empty directory (a mounted volume) is fine
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700


def test_deleted_tenants_do_not_get_their_secrets_back(tmp_path: Path) -> None:
    live = tmp_path / "keys"
    store = key_store(live, "kept", "gone-later", "gone-in-db", "gone-during")
    ledger = ErasureLedger(live / "erasures.jsonl")
    # A deletion under way while the backup is taken: in the ledger, secret not yet gone.
    ledger.record("tenant", "gone-during")
    path, _, _ = take_keystore_backup(live, tmp_path / "out", KEY)
    copy = open_keystore_backup(path, KEY)
    assert set(copy.secrets) == {"kept", "gone-later", "gone-in-db", "gone-during"}

    # After the backup: one tenant deleted (the current ledger says so)...
    ledger.record("tenant", "gone-later")
    store.destroy("gone-later")
    ledger.record("user", "kept", "u-1")
    current = ledger.path.read_bytes()

    # ... and one whose deletion only the database still knows (its ledger was lost).
    plan = plan_restore(copy, current_ledger=current, deleted_in_database={"gone-in-db": 42})
    assert set(plan.secrets) == {"kept"}
    assert plan.skipped_deleted == ["gone-during", "gone-in-db", "gone-later"]
    restored = tmp_path / "restored"
    write_keystore(restored, plan)
    assert sorted(p.name for p in restored.iterdir()) == ["erasures.jsonl", "kept.key"]
    entries = list(ErasureLedger(restored / "erasures.jsonl").entries())
    assert [(e["kind"], e["tenant_id"]) for e in entries] == [
        ("tenant", "gone-during"),
        ("tenant", "gone-later"),
        ("user", "kept"),
        ("tenant", "gone-in-db"),
    ]
    assert entries[-1]["at"] == 42

    # With no ledger and no database (everything lost): the backup is all there is, and
    # the tenant deleted after it comes back. This is the window docs/OPERATIONS.md states.
    blind = plan_restore(copy)
    assert set(blind.secrets) == {"kept", "gone-later", "gone-in-db"}
