"""Object ids: random version-4 UUIDs; message ids: version-7 UUIDs (time, then random).
Neither is ever repeated (not across threads, not across a fork)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from storage.ids import new_id, new_message_id


def test_ids_are_canonical_random_uuids() -> None:
    ids = [new_id() for _ in range(5000)]  # several draws
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


# Each generator, and the part of its ids that is random (a message id starts with its time).
GENERATORS = pytest.mark.parametrize(
    ("make", "random_part"),
    [(new_id, slice(None)), (new_message_id, slice(14, None))],
    ids=["object", "message"],
)


@GENERATORS
def test_threads_draw_apart(make: Callable[[], str], random_part: slice) -> None:
    seen: list[list[str]] = []

    def draw() -> None:
        seen.append([make() for _ in range(600)])

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [value[random_part] for ids in seen for value in ids]
    assert len(set(everything)) == len(everything) == 2400


@GENERATORS
def test_a_forked_child_does_not_reuse_its_parents_ids(
    make: Callable[[], str], random_part: slice
) -> None:
    make()  # the parent holds a partly used draw
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.close(read)
        os.write(write, ",".join(make()[random_part] for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [make()[random_part] for _ in range(300)]
    assert len(child) == 10
    assert not set(child) & set(parent)


def test_message_ids_are_canonical_time_ordered_uuids() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_message_id() for _ in range(5000)]  # several draws
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    stamps = []
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value
        stamps.append(parsed.int >> 80)  # the first 48 bits: Unix time in milliseconds
    assert before <= stamps[0]
    assert stamps[-1] <= after
    assert stamps == sorted(stamps)
    # Ids of one millisecond still differ in their 74 random bits, not by a counter.
    assert len({value[15:] for value in ids}) == len(ids)
