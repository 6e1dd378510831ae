"""Fixtures for the production tests: scratch databases and a PgBouncer.

Every test here runs against the real PostgreSQL server named by
``PORTSIDE_TEST_POSTGRESQL_URL`` (skipped without one, except under ``CI=true``)
in databases of its own, created and dropped here, so tests that break
connections or make a database read-only never disturb anybody else.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.production.pgbouncer import PgBouncer, free_port
from tests.production.postgres import admin_execute

MakeDatabase = Callable[[], str]


@pytest.fixture(scope="session")
def make_database(postgresql_url: str) -> Iterator[MakeDatabase]:
    """Create scratch databases on demand; all are dropped at the end of the session."""
    created: list[str] = []

    def make() -> str:
        name = f"portside_production_{uuid.uuid4().hex[:10]}"
        admin_execute(postgresql_url, f'CREATE DATABASE "{name}"')
        created.append(name)
        return make_url(postgresql_url).set(database=name).render_as_string(hide_password=False)

    yield make
    for name in created:
        admin_execute(postgresql_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def production_database(make_database: MakeDatabase) -> str:
    """One scratch database shared by the tests that do not alter it."""
    return make_database()


@pytest.fixture
def scratch_database(make_database: MakeDatabase) -> str:
    """A scratch database for one test."""
    return make_database()


@pytest.fixture(scope="session")
def pgbouncer(postgresql_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction pooling mode in front of the test server.

    Skipped when the ``pgbouncer`` binary is missing, except under ``CI=true``
    (``.ci/run`` installs it), where that is a failure.
    """
    if PgBouncer.binary() is None:
        message = "the pgbouncer binary is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires it")
        pytest.skip(message)
    server = make_url(postgresql_url)
    bouncer = PgBouncer(
        Path(tmp_path_factory.mktemp("pgbouncer")),
        server_host=server.host or "127.0.0.1",
        server_port=server.port or 5432,
        port=free_port(),
    )
    bouncer.start()
    yield bouncer
    bouncer.stop()
