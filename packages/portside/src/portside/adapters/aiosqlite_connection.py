"""An aiosqlite connection that makes fewer trips to its worker thread.

aiosqlite runs every call on one thread per connection, and each call is a round
trip: queue the call, wake the thread, wake the event loop with the result. On a
2-core machine one trip costs about 100 µs, more than SQLite spends answering a
primary-key lookup. Through SQLAlchemy a plain ``SELECT`` takes four (create a
cursor, execute, fetch, close the cursor), and the ``BEGIN`` portside issues for a
consistent snapshot takes a fifth.

:class:`AiosqliteConnection` keeps aiosqlite's thread and semantics and cuts the
trips of a statement to one:

* a transaction's ``BEGIN`` is deferred (:meth:`~AiosqliteConnection.defer_begin`)
  and runs on the thread just before the next thing that uses the connection, in
  the same trip, so the transaction still begins before its first statement;
* a cursor is created without a trip, and :meth:`BufferedCursor.execute` executes,
  fetches the first :data:`PREFETCH_ROWS` rows and closes an exhausted cursor in
  one trip; larger results are fetched on demand, so streaming still streams;
* ``commit()`` and ``rollback()`` outside a transaction, which sqlite3 turns into
  no-ops anyway, take no trip (the pool's rollback of every returned connection,
  after a commit, is one of them). Only when no trip is queued or running: one in
  flight, e.g. of a cancelled request, could still be about to begin a transaction.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Self

import aiosqlite
import anyio
import anyio.to_thread

__all__ = [
    "PREFETCH_ROWS",
    "AiosqliteConnection",
    "BufferedCursor",
]

#: Rows fetched in the same trip as the statement; the rest wait for a fetch call.
PREFETCH_ROWS = 1000


class AiosqliteConnection(aiosqlite.Connection):
    """aiosqlite's connection with deferred ``BEGIN`` and one-trip statements."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._pending_begin: str | None = None
        self._queued = 0  # trips queued, counted on the event loop's thread
        self._finished = 0  # trips finished, counted on the connection's thread
        # Like SQLAlchemy's own aiosqlite connections: an engine nobody disposed
        # must not keep the interpreter from exiting.
        self._thread.daemon = True

    async def _connect(self) -> Self:
        """Connect on the thread; if that fails, return only once the thread has stopped.

        aiosqlite (0.22) answers a failed connect by queueing its thread's stop without
        waiting for it. The thread then reports to the caller's event loop, which may be
        closed by then (a test that ended, a startup that gave up): "Event loop is
        closed", raised in that thread, fails whatever test pytest runs next.
        """
        try:
            await super()._connect()
        except BaseException:
            with anyio.CancelScope(shield=True):  # a cancelled connect waits too
                await anyio.to_thread.run_sync(self._thread.join)
            raise
        return self

    def defer_begin(self, statement: str) -> None:
        """Run ``statement`` (``BEGIN ...``) before the next use of the connection."""
        self._pending_begin = statement

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Queue ``fn`` on the connection's thread, after a deferred ``BEGIN``."""
        begin, self._pending_begin = self._pending_begin, None
        self._queued += 1
        try:
            return await super()._execute(self._trip, begin, fn, args, kwargs)  # type: ignore[no-untyped-call]
        except Exception:
            # The trip finished (it raised); if BEGIN itself failed, it is still owed.
            if begin is not None and not self._in_transaction():
                self._pending_begin = begin
            raise

    def _trip(
        self,
        begin: str | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # On the connection's thread.
        try:
            if begin is not None:
                self._conn.execute(begin)
            return fn(*args, **kwargs)
        finally:
            self._finished += 1

    def _in_transaction(self) -> bool:
        return self._connection is not None and self._connection.in_transaction

    def _nothing_to_end(self) -> bool:
        """No transaction open, and no trip in flight that could still open one."""
        return (
            self._connection is not None
            and self._queued == self._finished
            and not self._in_transaction()
        )

    async def commit(self) -> None:
        """Commit the transaction; no trip when none is open."""
        self._pending_begin = None
        if not self._nothing_to_end():
            await super().commit()

    async def rollback(self) -> None:
        """Roll back the transaction; no trip when none is open."""
        self._pending_begin = None
        if not self._nothing_to_end():
            await super().rollback()

    async def close(self) -> None:
        """Close the connection (a deferred ``BEGIN`` is dropped)."""
        self._pending_begin = None
        await super().close()

    def cursor(self) -> BufferedCursor:  # type: ignore[override]
        """A new cursor; creating it takes no trip (await it or use it directly)."""
        return BufferedCursor(self)


class BufferedCursor:
    """An async cursor whose ``execute`` also fetches and closes, in one trip.

    Has the async interface of :class:`aiosqlite.Cursor`. ``description``,
    ``rowcount`` and ``lastrowid`` are read on the thread right after executing.
    """

    def __init__(self, connection: AiosqliteConnection) -> None:
        self._connection = connection
        self._cursor: sqlite3.Cursor | None = None  # open only while rows remain
        self._rows: deque[Any] = deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def execute(self, sql: str, parameters: Any = ()) -> Self:
        """Execute ``sql``; fetch its first rows in the same trip."""
        await self._connection._execute(self._run, "execute", sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> Self:
        """Execute ``sql`` once per parameter set, in one trip."""
        await self._connection._execute(self._run, "executemany", sql, parameters)
        return self

    async def executescript(self, sql_script: str) -> Self:
        """Execute a script (sqlite3 commits any open transaction first)."""
        await self._connection._execute(self._run, "executescript", sql_script)
        return self

    def _run(self, method: str, *args: Any) -> None:
        # On the connection's thread.
        self._close_now()
        self._rows.clear()
        self.description, self.rowcount = None, -1
        cursor = self._connection._conn.cursor()
        try:
            getattr(cursor, method)(*args)
            self.description = cursor.description
            self.rowcount = cursor.rowcount
            self.lastrowid = cursor.lastrowid
            rows = cursor.fetchmany(PREFETCH_ROWS) if cursor.description else []
        except BaseException:
            cursor.close()
            raise
        self._rows.extend(rows)
        if len(rows) < PREFETCH_ROWS:
            cursor.close()
        else:
            self._cursor = cursor

    def _fetch(self, size: int | None) -> list[Any]:
        # On the connection's thread; ``None`` fetches everything left.
        cursor = self._cursor
        if cursor is None:
            return []
        rows = cursor.fetchall() if size is None else cursor.fetchmany(size)
        if size is None or len(rows) < size:
            self._close_now()
        return rows

    def _close_now(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    async def _take(self, size: int | None) -> list[Any]:
        wanted = len(self._rows) if size is None else min(size, len(self._rows))
        rows = [self._rows.popleft() for _ in range(wanted)]
        missing = None if size is None else size - len(rows)
        if self._cursor is not None and missing != 0:
            rows += await self._connection._execute(self._fetch, missing)
        return rows

    async def fetchone(self) -> Any:
        """The next row, or ``None``."""
        rows = await self._take(1)
        return rows[0] if rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` (default ``arraysize``) more rows."""
        return await self._take(self.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        """Every remaining row."""
        return await self._take(None)

    async def close(self) -> None:
        """Close the cursor; a trip only if rows were left unfetched."""
        self._rows.clear()
        if self._cursor is not None:
            await self._connection._execute(self._close_now)

    async def _chunks(self) -> AsyncIterator[Any]:
        while rows := await self.fetchmany(64):
            for row in rows:
                yield row

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    def __await__(self) -> Generator[Any, None, Self]:
        # ``await connection.cursor()``, as with aiosqlite.
        async def itself() -> Self:
            return self

        return itself().__await__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
