"""Identifiers and clocks shared by the store."""

from __future__ import annotations

import os
import threading
import time

_BATCH = 256  # ids drawn from one os.urandom call
_VARIANT = "89ab" * 4  # RFC 4122 variant: the high two bits of clock_seq_hi are 10
_pending = threading.local()


def _draw() -> list[str]:
    """``_BATCH`` random (version 4, RFC 4122) UUIDs as strings, from one system call.

    ``str(uuid.uuid4())`` costs a system call and a UUID object per id (~5 µs here), once per
    published message; this is the same format, with the same randomness, at ~1.5 µs.
    """
    h = os.urandom(16 * _BATCH).hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[int(h[i + 16], 16)]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, len(h), 32)
    ]


def new_id() -> str:
    """A random UUID (version 4) string. Each thread draws its own ids; a forked child
    starts afresh, so it never reuses ids its parent drew."""
    try:
        ids: list[str] = _pending.ids
        return ids.pop()
    except (AttributeError, IndexError):
        _pending.ids = ids = _draw()
        return ids.pop()


def _draw_tails() -> list[str]:
    """``_BATCH`` random tails of version 7 UUIDs (``-7xxx-Vxxx-xxxxxxxxxxxx``: version,
    74 random bits, RFC 4122 variant), from one system call."""
    h = os.urandom(10 * _BATCH).hex()
    return [
        f"-7{h[i : i + 3]}-{_VARIANT[int(h[i + 3], 16)]}{h[i + 4 : i + 7]}-{h[i + 7 : i + 19]}"
        for i in range(0, len(h), 20)
    ]


def new_message_id() -> str:
    """A version 7 UUID string (RFC 9562): the Unix time in milliseconds, then 74 random
    bits. Message ids only: new ones sort after older ones, so each stored message adds its
    entry at the right edge of the store's ``UNIQUE (id)`` index, on pages already in cache,
    instead of a random leaf; with version 4 ids that index was a third of Postgres's CPU
    per stored message (docs/BENCHMARKS.md, the sixth session). The time it reveals is the
    message's ``sent_at``, which travels with it anyway; ids of users, tenants, sessions and
    the rest stay version 4 (``new_id``), revealing nothing."""
    try:
        tails: list[str] = _pending.tails
        tail = tails.pop()
    except (AttributeError, IndexError):
        _pending.tails = tails = _draw_tails()
        tail = tails.pop()
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    return f"{stamp[:8]}-{stamp[8:]}{tail}"


def new_hex_id() -> str:
    """``uuid.uuid4().hex``, drawn as ``new_id`` draws (connection and request ids: one
    each per WebSocket connect, where ``uuid4``'s system call per id showed up)."""
    return new_id().replace("-", "")


def _forget_drawn() -> None:
    global _pending
    _pending = threading.local()


os.register_at_fork(after_in_child=_forget_drawn)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
