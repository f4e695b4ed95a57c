"""The audit hash chain: entries, their canonical form, and verification. No I/O.

Each tenant has one chain. An entry's ``hash`` is the SHA-256 (hex) of its canonical form,
which includes ``prev_hash``, the hash of the tenant's previous entry (``GENESIS`` for the
first). The canonical form is the JSON object of ``CANONICAL_FIELDS`` with sorted keys, no
whitespace and ASCII escapes (``json.dumps(doc, sort_keys=True, separators=(",", ":"))``),
so anyone holding an export can recompute it. ``seq`` counts 1, 2, 3... along the chain
and is hashed too, so an entry moved to another position no longer matches its hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

GENESIS = "0" * 64
CANONICAL_FIELDS = (
    "seq",
    "id",
    "tenant_id",
    "at",
    "actor_kind",
    "actor_id",
    "action",
    "target",
    "ip",
    "result",
    "detail",
    "prev_hash",
)

Result = Literal["success", "denied"]
ProblemKind = Literal["altered", "removed", "reordered"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performed an action, and from where."""

    kind: str  # user | agent | operator | system
    id: str
    ip: str = ""


OPERATOR = Actor("operator", "operator")  # the CLI, running with the server's configuration


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What a caller states about an action; the log adds time, ids and hashes."""

    actor: Actor
    action: str
    target: str
    result: Result = "success"
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    tenant_id: str
    seq: int
    id: str
    at: int  # unix milliseconds, UTC
    actor_kind: str
    actor_id: str
    action: str
    target: str
    ip: str
    result: str
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str

    def canonical(self) -> bytes:
        return canonical_form({name: getattr(self, name) for name in CANONICAL_FIELDS})

    def computed_hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


def canonical_form(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(
        {name: doc[name] for name in CANONICAL_FIELDS}, sort_keys=True, separators=(",", ":")
    ).encode()


def seal(
    tenant_id: str, seq: int, entry_id: str, at: int, record: AuditRecord, prev_hash: str
) -> AuditEntry:
    """The entry ``record`` becomes when appended after ``prev_hash``."""
    unsealed = AuditEntry(
        tenant_id=tenant_id,
        seq=seq,
        id=entry_id,
        at=at,
        actor_kind=record.actor.kind,
        actor_id=record.actor.id,
        action=record.action,
        target=record.target,
        ip=record.actor.ip,
        result=record.result,
        detail=dict(record.detail),
        prev_hash=prev_hash,
        hash="",
    )
    return AuditEntry(**{**_fields(unsealed), "hash": unsealed.computed_hash()})


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in AuditEntry.__slots__}


@dataclass(frozen=True, slots=True)
class Problem:
    """The first place a chain stops being what was written."""

    kind: ProblemKind
    seq: int  # the position in the chain where the problem shows
    entry_id: str | None
    detail: str

    def describe(self) -> str:
        named = f" ({self.entry_id})" if self.entry_id else ""
        return f"entry {self.seq}{named} {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str


def verify(entries: Iterable[AuditEntry], head: Head | None) -> tuple[int, Problem | None]:
    """Walk a tenant's entries in ``seq`` order; return how many were checked and the first
    problem, if any. ``head`` is the chain head the log recorded (None: never written)."""
    ordered = list(entries)
    by_hash = {entry.hash: entry for entry in ordered}
    highest = max([e.seq for e in ordered] + [head.seq if head else 0])
    expected_seq, expected_prev = 1, GENESIS
    for position, entry in enumerate(ordered):
        if entry.seq != expected_seq:
            return position, Problem(
                "removed",
                expected_seq,
                None,
                f"the chain jumps from {expected_seq - 1} to {entry.seq}",
            )
        if entry.computed_hash() != entry.hash:
            return position, _mismatch(entry, by_hash, highest)
        if entry.prev_hash != expected_prev:
            linked = by_hash.get(entry.prev_hash)
            if linked is not None and linked.seq > entry.seq:
                return position, Problem(
                    "reordered",
                    entry.seq,
                    entry.id,
                    f"it links to entry {linked.seq}, which now comes after it",
                )
            previous = ordered[position - 1] if position else None
            if previous is None:
                return position, Problem(
                    "removed", entry.seq, entry.id, "the chain does not start at the genesis"
                )
            return position, Problem(
                "altered",
                previous.seq,
                previous.id,
                f"it was rewritten and rehashed (or what followed it was removed): entry"
                f" {entry.seq} links to a hash no entry has",
            )
        expected_seq, expected_prev = entry.seq + 1, entry.hash
    checked = len(ordered)
    last = ordered[-1] if ordered else None
    if head is not None and head.seq > expected_seq - 1:
        return checked, Problem(
            "removed",
            expected_seq,
            None,
            f"the chain head records {head.seq} entries, the log holds {expected_seq - 1}",
        )
    if head is not None and head.hash != expected_prev:
        return checked, Problem(
            "altered",
            expected_seq - 1,
            last.id if last else None,
            "it no longer matches the hash the chain head recorded",
        )
    if head is None and last is not None:
        return checked, Problem("removed", last.seq, None, "the chain head is missing")
    return checked, None


def _mismatch(entry: AuditEntry, by_hash: Mapping[str, AuditEntry], highest: int) -> Problem:
    """An entry whose contents do not hash to its ``hash``: moved, or changed?"""
    for original in range(1, highest + 1):
        if original == entry.seq:
            continue
        doc = {name: getattr(entry, name) for name in CANONICAL_FIELDS} | {"seq": original}
        if hashlib.sha256(canonical_form(doc)).hexdigest() != entry.hash:
            continue
        if original > entry.seq and entry.prev_hash not in by_hash:
            return Problem(
                "removed",
                entry.seq,
                None,
                f"entry {original} was renumbered {entry.seq} to hide what came before it",
            )
        return Problem("reordered", entry.seq, entry.id, f"it was written as entry {original}")
    return Problem("altered", entry.seq, entry.id, "its contents no longer match its hash")


def entry_from_row(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        tenant_id=row["tenant_id"],
        seq=int(row["seq"]),
        id=row["id"],
        at=int(row["at"]),
        actor_kind=row["actor_kind"],
        actor_id=row["actor_id"],
        action=row["action"],
        target=row["target"],
        ip=row["ip"],
        result=row["result"],
        detail=json.loads(row["detail"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def detail_text(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))
