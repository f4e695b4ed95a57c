"""Making a write survive a crash: fsync of a file or directory by path."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync ``path``, a file or a directory (after a rename or a create in a directory,
    the directory's own entry must reach the disk too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
