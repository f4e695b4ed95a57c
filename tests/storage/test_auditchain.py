"""The hash chain on its own: sealing, and what verification reports for each tampering."""

from __future__ import annotations

import dataclasses

from storage.auditchain import GENESIS, Actor, AuditEntry, AuditRecord, Head, seal, verify


def chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = GENESIS
    for i in range(1, n + 1):
        record = AuditRecord(Actor("user", "u1", "10.0.0.1"), "agent.create", f"agent:{i}")
        entry = seal("t1", i, f"e{i}", 1_700_000_000_000 + i, record, prev)
        entries.append(entry)
        prev = entry.hash
    return entries


def head_of(entries: list[AuditEntry]) -> Head:
    return Head(entries[-1].seq, entries[-1].hash)


def test_an_untouched_chain_verifies() -> None:
    entries = chain(5)
    assert verify(entries, head_of(entries)) == (5, None)
    assert verify([], None) == (0, None)


def test_each_entry_links_to_the_previous_hash() -> None:
    entries = chain(3)
    assert entries[0].prev_hash == GENESIS
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert all(e.computed_hash() == e.hash for e in entries)


def test_an_edited_entry_is_named() -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(entries[2], target="agent:someone-else")
    _, problem = verify(entries, head_of(chain(5)))
    assert problem is not None
    assert (problem.kind, problem.seq, problem.entry_id) == ("altered", 3, "e3")


def test_an_edited_and_rehashed_entry_is_named() -> None:
    entries = chain(5)
    edited = dataclasses.replace(entries[1], result="denied")
    entries[1] = dataclasses.replace(edited, hash=edited.computed_hash())
    _, problem = verify(entries, head_of(entries))
    assert problem is not None
    assert (problem.kind, problem.seq, problem.entry_id) == ("altered", 2, "e2")


def test_a_deleted_entry_is_named() -> None:
    entries = chain(5)
    del entries[2]
    _, problem = verify(entries, Head(5, chain(5)[-1].hash))
    assert problem is not None
    assert (problem.kind, problem.seq) == ("removed", 3)


def test_a_deleted_entry_hidden_by_renumbering_is_named() -> None:
    entries = chain(5)
    del entries[2]
    entries[2:] = [dataclasses.replace(e, seq=e.seq - 1) for e in entries[2:]]
    _, problem = verify(entries, Head(4, entries[-1].hash))
    assert problem is not None
    assert (problem.kind, problem.seq) == ("removed", 3)


def test_a_deleted_last_entry_is_caught_by_the_head() -> None:
    entries = chain(5)
    head = head_of(entries)
    _, problem = verify(entries[:-1], head)
    assert problem is not None
    assert (problem.kind, problem.seq) == ("removed", 5)


def test_reordered_entries_are_named() -> None:
    entries = chain(5)
    second, third = entries[1], entries[2]
    entries[1] = dataclasses.replace(third, seq=2)
    entries[2] = dataclasses.replace(second, seq=3)
    _, problem = verify(entries, head_of(chain(5)))
    assert problem is not None
    assert (problem.kind, problem.seq, problem.entry_id) == ("reordered", 2, "e3")
