"""Fixtures of the integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from portside import DatabaseSettings


@pytest.fixture
def fresh_postgresql(postgresql_url: str) -> Iterator[DatabaseSettings]:
    """A PostgreSQL database of this test's own, dropped afterwards.

    Other tests (and other processes) share the server's database: a database per
    test keeps their tables and rows out of this one's counts.
    """
    name = f"portside_it_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        make_url(postgresql_url).set(drivername="postgresql+psycopg"),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield DatabaseSettings(
                url=make_url(postgresql_url)
                .set(database=name)
                .render_as_string(hide_password=False)
            )
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite-file", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseSettings:
    """A real database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite-file":
        return DatabaseSettings(url=f"sqlite:///{tmp_path / 'app'}.db")
    settings: DatabaseSettings = request.getfixturevalue("fresh_postgresql")
    return settings
