"""The test database's tables: created once per session, dropped at its end.

Tests roll back everything they do, so the tables only have to exist. The plugin
creates the ones that are missing the first time a test needs them (per database
URL and table) and drops exactly those at the end of the session: tables that
existed before the session are never created, altered or dropped.

Creation and removal run through a short-lived :class:`~portside.Lifecycle` (so
portside's connection defaults and startup checks apply, and an unreachable
database fails with portside's :class:`~portside.StartupError`) on an event loop
of their own, in a worker thread: they must commit, so they must stay outside any
test's outer transaction, and they may run from synchronous fixtures.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, MetaData, Table, inspect

from portside import DatabaseSettings, Lifecycle, StartupError

__all__ = ["TableRegistry"]

T = TypeVar("T")


def _run_in_fresh_event_loop(function: Callable[[], Awaitable[T]]) -> T:
    # A thread of its own: no event loop runs there, and no test's context (and so no
    # outer transaction) is inherited.
    with ThreadPoolExecutor(1, thread_name_prefix="portside-tables") as pool:
        return pool.submit(anyio.run, function).result()


def _create_missing(connection: Connection, tables: list[Table]) -> list[Table]:
    inspector = inspect(connection)
    missing = [t for t in tables if not inspector.has_table(t.name, schema=t.schema)]
    if missing:
        # Ordered by foreign keys; every table here belongs to one MetaData.
        missing[0].metadata.create_all(connection, tables=missing, checkfirst=False)
    return missing


def _drop(connection: Connection, tables: list[Table]) -> None:
    tables[0].metadata.drop_all(connection, tables=tables, checkfirst=True)


async def _in_transaction(
    settings: DatabaseSettings, work: Callable[[Connection, list[Table]], T], tables: list[Table]
) -> T:
    """Run ``work`` in one committed transaction through a short-lived Lifecycle."""
    async with Lifecycle(settings) as lifecycle:
        database = lifecycle.database()
        if "async" in database.kinds:
            async with database.async_engine.begin() as connection:
                return await connection.run_sync(work, tables)
        engine = database.engine

        def blocking() -> T:
            with engine.begin() as connection:
                return work(connection, tables)

        return await anyio.to_thread.run_sync(blocking)


@dataclass
class _Created:
    settings: DatabaseSettings
    tables: list[Table] = field(default_factory=list)


class TableRegistry:
    """Remembers which tables exist for which database during one test session.

    The plugin keeps one for the session (the ``portside_tables`` fixture asks it
    for each test's database and metadata); :meth:`drop_created` runs at the end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[tuple[str, MetaData, str]] = set()
        self._created: dict[tuple[str, MetaData], _Created] = {}
        # A database that failed once fails every later test at once, not after
        # another startup timeout each.
        self._failed: dict[str, Exception] = {}

    def ensure(self, settings: DatabaseSettings, metadata: MetaData) -> None:
        """Create the tables of ``metadata`` that ``settings``' database lacks.

        Cheap after the first call for a database: only tables not seen before
        (models imported later) cost a round trip. If the database could not be
        reached, later calls for it raise the same error without trying again.
        """
        url = settings.sync_url_object.render_as_string(hide_password=False)
        with self._lock:
            if (failure := self._failed.get(url)) is not None:
                raise failure.with_traceback(None)
            new = [t for t in metadata.sorted_tables if (url, metadata, t.key) not in self._known]
            if not new:
                return
            try:
                created = _run_in_fresh_event_loop(
                    lambda: _in_transaction(settings, _create_missing, new)
                )
            except StartupError as exc:
                self._failed[url] = exc
                raise
            self._known.update((url, metadata, t.key) for t in new)
            if created:
                entry = self._created.setdefault((url, metadata), _Created(settings))
                entry.tables.extend(created)

    def drop_created(self) -> None:
        """Drop every table :meth:`ensure` created, newest first."""
        with self._lock:
            created, self._created = list(self._created.values()), {}
            self._known.clear()
        for entry in reversed(created):
            tables = entry.tables
            _run_in_fresh_event_loop(lambda: _in_transaction(entry.settings, _drop, tables))  # noqa: B023 - runs at once
