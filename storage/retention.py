"""Backup retention: delete BayChat backups older than the retention period.

Only regular files named ``baychat-*.bcbk`` whose header is a BayChat backup header are
considered; their age is the creation time in that header (authenticated when the backup
is read), not the file's mtime, which a copy or a restore from tape changes. Everything
else in the directory is left alone, and so is the newest backup whatever its age: a
backup job that stopped must not be followed by a prune that leaves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from storage.backup import PREFIX, SUFFIX
from storage.backupfile import NotABackupError, read_header

DAY_MS = 86_400_000


@dataclass
class PruneResult:
    deleted: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # not BayChat backups


def _created_at(path: Path) -> int | None:
    if path.is_symlink() or not path.is_file():
        return None
    if not (path.name.startswith(PREFIX) and path.name.endswith(SUFFIX)):
        return None
    try:
        with path.open("rb") as handle:
            return read_header(handle).created_at_ms
    except (NotABackupError, OSError):
        return None


def prune(directory: Path, *, keep_days: float, now_ms: int, dry_run: bool = False) -> PruneResult:
    if keep_days < 1:
        raise ValueError("the retention period must be at least one day")
    result = PruneResult()
    if not directory.is_dir():
        return result
    backups: list[tuple[int, Path]] = []
    for path in sorted(directory.iterdir()):
        created = _created_at(path)
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
