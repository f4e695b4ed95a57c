"""Pruning deletes only BayChat backups past the retention period, never the newest."""

from __future__ import annotations

import io
import os
from pathlib import Path

from storage.backupfile import Kind, SealedWriter
from storage.keybackup import KEYSTORE
from storage.retention import DAY_MS, prune

NOW = 1_800_000_000_000
KEY = os.urandom(32)


def backup_file(directory: Path, name: str, age_days: float, kind: Kind = "database") -> Path:
    out = io.BytesIO()
    writer = SealedWriter(out, KEY, created_at_ms=NOW - int(age_days * DAY_MS), kind=kind)
    writer.write(b"payload")
    writer.close()
    path = directory / name
    path.write_bytes(out.getvalue())
    return path


def test_prune_keeps_younger_backups_and_other_files(tmp_path: Path) -> None:
    old = backup_file(tmp_path, "baychat-old.bcbk", 36)
    edge = backup_file(tmp_path, "baychat-edge.bcbk", 34.9)
    young = backup_file(tmp_path, "baychat-young.bcbk", 1)
    renamed = backup_file(tmp_path, "mine.bcbk", 90)  # not named like ours: not ours
    impostor = tmp_path / "baychat-fake.bcbk"
    impostor.write_bytes(b"not a backup at all")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    os.utime(young, (0, 0))  # mtime lies; the authenticated header decides

    result = prune(tmp_path, keep_days=35, now_ms=NOW)

    assert result.deleted == [old]
    assert not old.exists()
    for path in (edge, young, renamed, impostor, notes):
        assert path.exists(), path.name
    assert set(result.ignored) == {renamed, impostor, notes}


def test_the_newest_backup_survives_however_old(tmp_path: Path) -> None:
    older = backup_file(tmp_path, "baychat-a.bcbk", 80)
    newest = backup_file(tmp_path, "baychat-b.bcbk", 50)
    result = prune(tmp_path, keep_days=35, now_ms=NOW)
    assert result.deleted == [older]
    assert newest.exists()


def test_dry_run_and_configurable_retention(tmp_path: Path) -> None:
    week_old = backup_file(tmp_path, "baychat-w.bcbk", 8)
    backup_file(tmp_path, "baychat-n.bcbk", 0)
    assert prune(tmp_path, keep_days=7, now_ms=NOW, dry_run=True).deleted == [week_old]
    assert week_old.exists()
    assert prune(tmp_path, keep_days=35, now_ms=NOW).deleted == []
    assert prune(tmp_path, keep_days=7, now_ms=NOW).deleted == [week_old]
    assert not week_old.exists()


def test_key_store_backups_have_their_own_family(tmp_path: Path) -> None:
    old = backup_file(tmp_path, "baychat-keys-old.bckeys", 40, "keystore")
    young = backup_file(tmp_path, "baychat-keys-young.bckeys", 2, "keystore")
    database = backup_file(tmp_path, "baychat-db.bcbk", 90)
    # Named like a key-store backup, but a database backup inside: not the family's.
    disguised = backup_file(tmp_path, "baychat-keys-disguised.bckeys", 90)
    listed = prune(tmp_path, keep_days=35, now_ms=NOW, family=KEYSTORE, dry_run=True)
    assert listed.deleted == [old]
    assert old.exists()
    result = prune(tmp_path, keep_days=35, now_ms=NOW, family=KEYSTORE)
    assert result.deleted == [old]
    assert result.kept == [young]
    assert set(result.ignored) == {database, disguised}
    assert database.exists()
    assert disguised.exists()
    # And the database prune leaves key-store backups alone, whatever their age.
    assert prune(tmp_path, keep_days=35, now_ms=NOW).ignored.count(young) == 1
    assert young.exists()
