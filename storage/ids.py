"""Identifiers and clocks shared by the store."""

from __future__ import annotations

import time
import uuid


def new_id() -> str:
    return str(uuid.uuid4())


def now_ms() -> int:
    return time.time_ns() // 1_000_000
