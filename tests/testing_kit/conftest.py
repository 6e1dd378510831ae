"""The testing kit's own tests run every test on SQLite and on PostgreSQL.

They use the plugin exactly as a user does; the only difference is this override
of ``portside_database_url``, which parametrizes the database.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.sql.schema import Table

from portside import DatabaseSettings


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite file for all of the kit's SQLite tests, as the plugin's default is."""
    return f"sqlite:///{tmp_path_factory.mktemp('testing_kit') / 'kit.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def portside_database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """Each test of the kit runs on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url
    return str(request.getfixturevalue("postgresql_url"))


def committed_rows(settings: DatabaseSettings, table: Table) -> int:
    """Rows of ``table`` committed for real, read outside every test transaction.

    Blocking: call it from a worker thread in async tests.
    """
    engine = create_engine(settings.sync_url_object)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()
