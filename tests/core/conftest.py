"""Fixtures for the core's tests: one database per backend, and a notes table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table

from portside import DatabaseSettings, Lifecycle

metadata = MetaData()
notes = Table(
    "portside_core_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(200), nullable=False),
)

SettingsFactory = Callable[..., DatabaseSettings]


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each core test that takes ``make_settings`` runs on every backend."""
    return str(request.param)


@pytest.fixture
def make_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> SettingsFactory:
    """Build settings for the test's backend; keyword arguments override fields."""
    if backend == "sqlite-file":
        url = f"sqlite:///{tmp_path / 'core.db'}"
    elif backend == "sqlite-memory":
        url = "sqlite://"
    else:
        url = request.getfixturevalue("postgresql_url")

    def make(**overrides: Any) -> DatabaseSettings:
        return DatabaseSettings(url=url, **{"startup_timeout": 10.0, **overrides})

    return make


async def create_tables(lifecycle: Lifecycle, name: str | None = None) -> None:
    """(Re)create the notes table through the lifecycle's own engine."""
    database = lifecycle.database(name)
    if "async" in database.kinds:
        async with database.async_engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
            await connection.run_sync(metadata.create_all)
    else:
        with database.engine.begin() as connection:
            metadata.drop_all(connection)
            metadata.create_all(connection)
