"""Backup retention: delete BayChat backups older than the retention period.

One family at a time (``storage.backup.FileFamily``): database backups by default, or
key-store backups (``storage.keybackup.KEYSTORE``), each with its own directory and
retention. Only regular files named like the family (``baychat-*.bcbk`` for database
backups) whose header is a BayChat backup header of the family's kind are considered;
their age is the creation time in that header (authenticated when the backup is read), not
the file's mtime, which a copy or a restore from tape changes. Everything else in the
directory is left alone, and so is the newest backup of the family whatever its age: a
backup job that stopped must not be followed by a prune that leaves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from storage.backup import DATABASE, FileFamily
from storage.backupfile import NotABackupError, read_header

DAY_MS = 86_400_000


@dataclass
class PruneResult:
    deleted: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # not BayChat backups of the family

    def report(self, keep_days: int, dry_run: bool) -> dict[str, object]:
        """What a prune command prints: the rule, and the file names in each outcome."""
        return {
            "keep_days": keep_days,
            "dry_run": dry_run,
            "deleted": [p.name for p in self.deleted],
            "kept": [p.name for p in self.kept],
            "ignored": [p.name for p in self.ignored],
        }


def _created_at(path: Path, family: FileFamily) -> int | None:
    if path.is_symlink() or not path.is_file() or not family.named(path.name):
        return None
    try:
        with path.open("rb") as handle:
            header = read_header(handle)
    except (NotABackupError, OSError):
        return None
    return header.created_at_ms if header.kind == family.kind else None


def prune(
    directory: Path,
    *,
    keep_days: float,
    now_ms: int,
    dry_run: bool = False,
    family: FileFamily = DATABASE,
) -> PruneResult:
    if keep_days < 1:
        raise ValueError("the retention period must be at least one day")
    result = PruneResult()
    if not directory.is_dir():
        return result
    backups: list[tuple[int, Path]] = []
    for path in sorted(directory.iterdir()):
        created = _created_at(path, family)
        if created is None:
            result.ignored.append(path)
        else:
            backups.append((created, path))
    backups.sort()
    cutoff = now_ms - int(keep_days * DAY_MS)
    for position, (created, path) in enumerate(backups):
        newest = position == len(backups) - 1
        if created < cutoff and not newest:
            if not dry_run:
                path.unlink(missing_ok=True)
            result.deleted.append(path)
        else:
            result.kept.append(path)
    return result
