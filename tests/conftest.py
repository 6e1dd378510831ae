"""Fixtures shared by the project's own tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.replicas.streaming import ReplicaUnavailableError, StreamingReplica

DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/test"


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
    url = os.environ.get("PORTSIDE_TEST_POSTGRESQL_URL", DEFAULT_POSTGRESQL_URL)
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
