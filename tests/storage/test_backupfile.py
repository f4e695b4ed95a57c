"""The backup file format refuses truncated, reordered, altered and foreign files, each with
an error that says which."""

from __future__ import annotations

import io
import os

import pytest

from storage.backupfile import (
    HEADER_SIZE,
    MAGIC,
    DamagedBackupError,
    NotABackupError,
    SealedWriter,
    WrongKeyError,
    WrongKindError,
    open_sealed,
)

KEY = os.urandom(32)
CHUNK = 64
SEALED = CHUNK + 16


def sealed(data: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    writer = SealedWriter(out, key, created_at_ms=1_700_000_000_000, chunk_size=CHUNK)
    writer.write(data)
    writer.close()
    return out.getvalue()


def read_all(blob: bytes, key: bytes = KEY) -> bytes:
    _, chunks = open_sealed(io.BytesIO(blob), key)
    return b"".join(chunks)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 7])
def test_round_trip_at_every_chunk_boundary(size: int) -> None:
    data = os.urandom(size)
    blob = sealed(data)
    assert read_all(blob) == data
    assert data[:16] not in blob or size < 16


def test_the_header_is_self_describing() -> None:
    header, _ = open_sealed(io.BytesIO(sealed(b"x")), KEY)
    assert header.created_at_ms == 1_700_000_000_000
    assert header.chunk_size == CHUNK


def test_truncated_at_a_chunk_boundary_is_refused_as_truncated() -> None:
    blob = sealed(os.urandom(4 * CHUNK + 10))
    cut = blob[: HEADER_SIZE + 2 * SEALED]
    with pytest.raises(DamagedBackupError, match="truncated"):
        read_all(cut)


def test_truncated_inside_a_chunk_is_refused() -> None:
    blob = sealed(os.urandom(4 * CHUNK + 10))
    with pytest.raises(DamagedBackupError, match="truncated"):
        read_all(blob[:-5])
    with pytest.raises(DamagedBackupError, match="truncated"):
        read_all(blob[:HEADER_SIZE])


def test_reordered_chunks_are_refused() -> None:
    blob = sealed(os.urandom(4 * CHUNK))
    body = blob[HEADER_SIZE:]
    chunks = [body[i : i + SEALED] for i in range(0, len(body), SEALED)]
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(DamagedBackupError, match="chunk 1 fails authentication"):
        read_all(blob[:HEADER_SIZE] + b"".join(chunks))


def test_a_dropped_middle_chunk_is_refused() -> None:
    blob = sealed(os.urandom(4 * CHUNK))
    without = blob[: HEADER_SIZE + SEALED] + blob[HEADER_SIZE + 2 * SEALED :]
    with pytest.raises(DamagedBackupError):
        read_all(without)


@pytest.mark.parametrize("offset", [HEADER_SIZE + 3, HEADER_SIZE + SEALED + 20, -1])
def test_an_altered_byte_is_refused(offset: int) -> None:
    blob = bytearray(sealed(os.urandom(3 * CHUNK)))
    blob[offset] ^= 0x01
    with pytest.raises(DamagedBackupError):
        read_all(bytes(blob))


def test_an_altered_header_is_refused() -> None:
    blob = bytearray(sealed(b"payload"))
    blob[13] ^= 0x01  # inside the creation time: authenticated though not secret
    with pytest.raises(DamagedBackupError):
        read_all(bytes(blob))


def test_appended_data_is_refused() -> None:
    blob = sealed(os.urandom(CHUNK + 3))
    with pytest.raises(DamagedBackupError):
        read_all(blob + b"extra")


def test_the_wrong_key_is_named_as_such() -> None:
    with pytest.raises(WrongKeyError, match="another backup key"):
        read_all(sealed(b"secret"), os.urandom(32))


def test_other_files_are_not_backups() -> None:
    for blob in (b"", b"SQLite format 3\x00" + bytes(100), b"BAYCHBK"):
        with pytest.raises(NotABackupError):
            read_all(blob)


def test_the_kind_is_in_the_authenticated_header() -> None:
    out = io.BytesIO()
    writer = SealedWriter(out, KEY, created_at_ms=1, chunk_size=CHUNK, kind="keystore")
    writer.write(b"secrets")
    writer.close()
    blob = out.getvalue()
    header, chunks = open_sealed(io.BytesIO(blob), KEY, kind="keystore")
    assert header.kind == "keystore"
    assert b"".join(chunks) == b"secrets"
    with pytest.raises(WrongKindError, match="key-store backup, not a database backup"):
        open_sealed(io.BytesIO(blob), KEY)
    with pytest.raises(WrongKindError, match="database backup, not a key-store backup"):
        open_sealed(io.BytesIO(sealed(b"rows")), KEY, kind="keystore")
    # Relabelled as a database backup: the header is in every chunk's associated data.
    relabelled = MAGIC + blob[len(MAGIC) :]
    with pytest.raises(DamagedBackupError):
        read_all(relabelled)
