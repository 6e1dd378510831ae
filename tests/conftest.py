"""Fixtures shared by the project's own tests, and a database per xdist worker.

The PostgreSQL tests use the database named by ``PORTSIDE_TEST_POSTGRESQL_URL``
and recreate tables in it, so two pytest-xdist workers must not share it. Under
``pytest -n N``, each worker clones it into ``<name>_<worker>`` (``test_gw0``...)
with the testing kit's :class:`~portside_testing.worker_databases.WorkerDatabases`,
before collection, points ``PORTSIDE_TEST_POSTGRESQL_URL`` at its clone (the
conformance suite and the servers the tests start read that variable), and drops
the clone at the end. Databases, roles and servers a test makes beyond that are
named after its database or a uuid, and listen on ports the kernel picked.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from portside_testing.plugin import settings_for
from portside_testing.worker_databases import WorkerDatabases, admin_connection, drop
from tests.replicas.streaming import ReplicaUnavailableError, StreamingReplica

POSTGRESQL_URL_ENV = "PORTSIDE_TEST_POSTGRESQL_URL"
DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/test"

_WORKER_DATABASES = pytest.StashKey[WorkerDatabases]()


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, give this worker its own clone of the test database (see the module)."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None:
        return
    url = os.environ.get(POSTGRESQL_URL_ENV, DEFAULT_POSTGRESQL_URL)
    parsed = make_url(url)
    if not _reachable(parsed.host or "127.0.0.1", parsed.port or 5432):
        return  # the postgresql_url fixture skips the tests (fails them under CI)
    databases = WorkerDatabases(worker)
    clone = databases.clone(settings_for(url).sync_url_object)
    config.stash[_WORKER_DATABASES] = databases
    os.environ[POSTGRESQL_URL_ENV] = parsed.set(database=clone.database).render_as_string(
        hide_password=False
    )


#: Modules that take minutes (pytest runs of their own, under xdist too). Under xdist
#: they are handed out first: ``--dist loadscope`` gives out whole modules in order,
#: and this one last would leave one worker running it alone at the end.
SLOWEST_FIRST = ("testing_kit/test_parallel.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, start with the slowest modules (each worker sorts the same way)."""
    if getattr(config, "workerinput", None) is None:
        return
    items.sort(key=lambda item: not item.path.as_posix().endswith(SLOWEST_FIRST))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop this worker's clone and the databases named after it (closing their connections).

    The conformance suite makes ``<database>_analytics`` and ``<database>_second``.
    """
    databases = config.stash.get(_WORKER_DATABASES, None)
    if databases is None:
        return
    clone = settings_for(os.environ[POSTGRESQL_URL_ENV]).sync_url_object
    with admin_connection(clone) as connection:
        siblings = connection.execute(
            text("SELECT datname FROM pg_database WHERE starts_with(datname, :prefix)"),
            {"prefix": f"{clone.database}_"},
        ).scalars()
        for name in list(siblings):
            drop(clone.set(database=name))
    errors = databases.drop_all()
    if errors:
        warnings.warn(
            "dropping the worker's test database failed: " + "; ".join(errors), stacklevel=1
        )


@pytest.fixture
def anyio_backend() -> str:
    """Async SQLAlchemy runs on asyncio only; trio tests ask for trio explicitly."""
    return "asyncio"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgresql_url() -> str:
    """The PostgreSQL server the tests use (``PORTSIDE_TEST_POSTGRESQL_URL``).

    Skipped with a reason when no server answers, except under ``CI=true``, where
    PostgreSQL tests must run.
    """
    url = os.environ.get(POSTGRESQL_URL_ENV, DEFAULT_POSTGRESQL_URL)
    parsed = make_url(url)
    if not _reachable(parsed.host or "127.0.0.1", parsed.port or 5432):
        message = f"no PostgreSQL server at {parsed.host}:{parsed.port or 5432}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires one")
        pytest.skip(f"{message}; set PORTSIDE_TEST_POSTGRESQL_URL to run these tests")
    return url


@pytest.fixture(scope="session")
def streaming_replica(postgresql_url: str) -> Iterator[StreamingReplica]:
    """A hot standby of the test server (``pg_basebackup -R``), for the whole session.

    Skipped with the reason when one cannot be made here (not root or postgres, no
    server binaries, the primary elsewhere), except under ``CI=true``, where that
    is a failure.
    """
    try:
        replica = StreamingReplica(postgresql_url)
    except ReplicaUnavailableError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start a streaming replica: {exc}, and CI=true requires one")
        pytest.skip(f"cannot start a streaming replica: {exc}")
    try:
        replica.create()
    except ReplicaUnavailableError as exc:
        replica.remove()
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start a streaming replica: {exc}, and CI=true requires one")
        pytest.skip(f"cannot start a streaming replica: {exc}")
    except BaseException:
        replica.remove()
        raise
    yield replica
    replica.remove()
