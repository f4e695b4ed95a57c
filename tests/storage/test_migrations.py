"""The migration runner: versions, and the application-role placeholder of Postgres files."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.engine import database_user, open_engine
from storage.migrations import (
    Migration,
    SchemaVersionError,
    check_version,
    current_version,
    latest_version,
    migrate,
    render,
)


def test_the_placeholder_becomes_the_quoted_application_role() -> None:
    grant = Migration(2, "grants", "GRANT SELECT ON t TO __APP_ROLE__;\n")
    assert render(grant, "baychat_app") == 'GRANT SELECT ON t TO "baychat_app";\n'
    assert render(grant, 'odd"; DROP TABLE t; --') == (
        'GRANT SELECT ON t TO "odd""; DROP TABLE t; --";\n'
    )


def test_a_grant_without_a_known_application_role_is_refused() -> None:
    with pytest.raises(SchemaVersionError, match="BAYCHAT_DATABASE_URL must name its user"):
        render(Migration(2, "grants", "GRANT SELECT ON t TO __APP_ROLE__;"), None)
    plain = Migration(3, "plain", "CREATE TABLE t (x INTEGER);")
    assert render(plain, None) == plain.sql


def test_the_application_role_is_the_user_of_the_application_url() -> None:
    assert database_user("postgresql://baychat_app:secret@db:5432/baychat") == "baychat_app"
    assert database_user("postgresql://we%40ird:pw@db/baychat") == "we@ird"
    assert database_user("postgresql://db/baychat") is None
    assert database_user("sqlite:///data/baychat.db") is None


async def test_sqlite_migrates_once_and_an_unmigrated_file_is_refused(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'baychat.db'}")
    await engine.open()
    try:
        assert await current_version(engine) == 0
        with pytest.raises(SchemaVersionError, match="run `baychat migrate`"):
            await check_version(engine)
        assert await migrate(engine) == list(range(1, latest_version("sqlite") + 1))
        assert await migrate(engine) == []
        await check_version(engine)
    finally:
        await engine.close()
