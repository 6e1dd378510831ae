"""A database per pytest-xdist worker, cloned from a template, dropped at the end.

Parallel workers must not share a database: their outer transactions would wait
for each other's locks (and on SQLite, one writer at a time). Each worker clones
the database named by the test URL (the *template*) into ``<name>_<worker>``
(``test`` → ``test_gw0``): ``CREATE DATABASE test_gw0 TEMPLATE test`` on
PostgreSQL, a file copy on SQLite. PostgreSQL refuses to clone a template that
another session uses, so the clones of all workers are serialized (an advisory
lock on PostgreSQL, a file lock on SQLite), and a clone refused because someone
else is connected is retried for a while.

:class:`WorkerDatabases` does it; the plugin keeps one per test session, and a
database of your own (a second database of a multi-database app) is cloned the
same way with the ``portside_worker_database`` fixture.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "WorkerDatabases",
    "admin_connection",
    "clone_url",
    "drop",
    "exclusively",
]

logger = logging.getLogger("portside_testing")

_IN_USE = "is being accessed by other users"
_CLONE_RETRY_SECONDS = 30.0


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _admin_engine_url(url: URL) -> URL:
    """The same server's maintenance database: CREATE/DROP DATABASE run outside the targets."""
    return url.set(database="postgres")


@contextlib.contextmanager
def admin_connection(url: URL) -> Iterator[Connection]:
    """An AUTOCOMMIT connection to the maintenance database of ``url``'s PostgreSQL server."""
    engine = create_engine(_admin_engine_url(url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"portside:{name}".encode()).digest()[:8], "big", signed=True
    )


@contextlib.contextmanager
def exclusively(url: URL) -> Iterator[None]:
    """Hold the lock every process cloning or rebuilding ``url``'s database takes.

    PostgreSQL: a session advisory lock on the server (keyed by the database
    name); SQLite: ``flock`` on ``<file>.lock``.
    """
    if url.get_backend_name() == "sqlite":
        assert url.database
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        with open(f"{url.database}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with admin_connection(url) as connection:
        key = _lock_key(url.database or "")
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def clone_url(url: URL, suffix: str) -> URL:
    """``url`` with its database renamed ``<name>_<suffix>`` (a file next to it on SQLite)."""
    name = url.database or ""
    if url.get_backend_name() == "sqlite":
        path = Path(name)
        return url.set(database=str(path.with_name(f"{path.stem}_{suffix}{path.suffix}")))
    return url.set(database=f"{name}_{suffix}"[:63])


def _clone_postgresql(template: URL, clone: URL) -> None:
    deadline = time.monotonic() + _CLONE_RETRY_SECONDS
    delay = 0.05
    create = text(
        f"CREATE DATABASE {_quote(clone.database or '')} TEMPLATE {_quote(template.database or '')}"
    )
    with admin_connection(template) as connection:
        connection.execute(
            text(f"DROP DATABASE IF EXISTS {_quote(clone.database or '')} WITH (FORCE)")
        )
        while True:
            try:
                connection.execute(create)
            except DBAPIError as exc:
                if _IN_USE not in str(exc) or time.monotonic() > deadline:
                    raise
                logger.info("template %s in use; retrying the clone", template.database)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                return


def _clone_sqlite(template: URL, clone: URL) -> None:
    assert template.database
    assert clone.database
    source = Path(template.database)
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        source.touch()  # an empty database: the tables come from metadata or migrations
    shutil.copyfile(source, clone.database)


def drop(url: URL) -> None:
    """Drop ``url``'s database (its file, on SQLite); closes other sessions on PostgreSQL."""
    if url.get_backend_name() == "sqlite":
        assert url.database
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(url.database + suffix).unlink(missing_ok=True)
        return
    with admin_connection(url) as connection:
        connection.execute(
            text(f"DROP DATABASE IF EXISTS {_quote(url.database or '')} WITH (FORCE)")
        )


class WorkerDatabases:
    """Clones made by this process, dropped by :meth:`drop_all` (one per test session).

    ``prepare`` (optional) runs on the template, under the lock, before each
    clone: the plugin migrates the template there.
    """

    def __init__(self, suffix: str) -> None:
        #: What clones are named after: the xdist worker id (``gw0``), or ``main``.
        self.suffix = suffix
        self._lock = threading.Lock()
        self._clones: dict[str, URL] = {}

    def clone(
        self,
        template: URL,
        prepare: Callable[[URL], object] | None = None,
        *,
        named_after: URL | None = None,
    ) -> URL:
        """The clone of ``template`` for this process, made on first use (sync URL in and out).

        Named ``<name>_<suffix>`` after ``named_after`` (default: ``template``).
        """
        key = template.render_as_string(hide_password=False)
        with self._lock:
            if (done := self._clones.get(key)) is not None:
                return done
            clone = clone_url(named_after or template, self.suffix)
            with exclusively(template):
                if prepare is not None:
                    prepare(template)
                if template.get_backend_name() == "sqlite":
                    _clone_sqlite(template, clone)
                else:
                    _clone_postgresql(template, clone)
            self._clones[key] = clone
            return clone

    def drop_all(self) -> Sequence[str]:
        """Drop every clone; returns one line per failure (no passwords)."""
        errors = []
        with self._lock:
            clones, self._clones = list(self._clones.values()), {}
        for clone in clones:
            try:
                drop(clone)
            except Exception as exc:
                errors.append(f"{clone.render_as_string()}: {type(exc).__name__}: {exc}")
        return errors
