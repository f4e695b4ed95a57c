"""Message and object ids: random version-4 UUIDs, never repeated (not across threads, not
across a fork)."""

from __future__ import annotations

import os
import threading
import uuid

from storage.ids import new_id


def test_ids_are_canonical_random_uuids() -> None:
    ids = [new_id() for _ in range(5000)]  # several draws
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_threads_draw_apart() -> None:
    seen: list[list[str]] = []

    def draw() -> None:
        seen.append([new_id() for _ in range(600)])

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [value for ids in seen for value in ids]
    assert len(set(everything)) == len(everything) == 2400


def test_a_forked_child_does_not_reuse_its_parents_ids() -> None:
    new_id()  # the parent holds a partly used draw
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.close(read)
        os.write(write, ",".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(300)]
    assert len(child) == 10
    assert not set(child) & set(parent)
