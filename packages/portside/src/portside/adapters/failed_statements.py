"""Refuse to commit a transaction in which a statement failed and was not undone.

PostgreSQL aborts a transaction at its first failed statement; a later ``COMMIT``
answers with the ``ROLLBACK`` command tag, and neither asyncpg nor psycopg raises.
Code that catches the failure and carries on would report success for work that
was thrown away. SQLite keeps such a transaction going, with the earlier statements
in it. So, on every backend, a transaction in which a statement failed refuses to
commit with :class:`~portside.errors.TransactionAbortedError`, after rolling itself
back. Rolling back a SAVEPOINT (``session.begin_nested()``) that began before the
failure undoes it: that is the way to recover from a statement that may fail.

:func:`install` makes every engine portside builds hand out :class:`_Connection`,
which steps in at the points SQLAlchemy's connection events would fire (before
them, like listeners registered first), and listens to the dialect's
``handle_error``:

- ``handle_error`` notes the failure at the current SAVEPOINT depth (0: none open),
  for an error inside a transaction that did not lose its connection (a lost
  connection makes SQLAlchemy demand a rollback anyway);
- ``savepoint`` / ``rollback_savepoint`` / ``release_savepoint`` keep the depth; a
  rolled-back SAVEPOINT forgets the failures noted since it began;
- ``release_savepoint`` and ``commit`` refuse while a failure inside them is noted:
  they roll back (to the SAVEPOINT, or the whole transaction) and raise;
- ``begin`` forgets everything: a new transaction starts clean.

A unit of work inside an outer transaction (test isolation) commits by releasing
its SAVEPOINT, so it refuses the same way. The state lives on the ``Connection``
(a transaction never outlives it) only once a transaction used a SAVEPOINT or saw
a failure: the common unit of work pays one attribute set at ``BEGIN`` and one
read at ``COMMIT``, and no round trip.

Why a ``Connection`` subclass rather than the engine's ``begin``/``commit`` events:
one connection-level listener on an engine makes every new ``Connection`` resolve
each of the engine's events it fires (connect, begin, before/after execute,
commit...) through a joined dispatcher, about a hundred Python calls per request
on the hot path. The subclass costs one method call per step. It overrides
SQLAlchemy's private ``Connection._*_impl`` methods and sets the engine's private
``_connection_cls`` and ``_option_cls`` (see docs/versions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event
from sqlalchemy.sql.expression import SavepointClause

from portside.errors import TransactionAbortedError

if TYPE_CHECKING:
    from sqlalchemy import Engine, NestedTransaction
    from sqlalchemy.engine import ExceptionContext
    from sqlalchemy.engine.base import RootTransaction

__all__ = [
    "hand_out",
    "install",
]

#: The attribute of a connection that holds its transaction's :class:`_Marks`.
_KEY = "_portside_marks"


@dataclass(slots=True)
class _Marks:
    """What one transaction's connection knows about its failed statements."""

    #: SAVEPOINTs open now (0: only the transaction itself).
    depth: int = 0
    #: The shallowest depth at which a failure has not been undone, if any.
    failed_at: int | None = None
    #: The first such failure, in one line, for the error message.
    failure: str = ""
    #: The SAVEPOINT whose release was refused, still attached to the connection.
    refused: NestedTransaction | None = None


def install(engine: Engine) -> None:
    """Make ``engine``'s transactions refuse to commit after an unhandled failure."""
    hand_out(engine, _Connection)
    event.listen(engine, "handle_error", _note_failure)


def hand_out(engine: Engine, connection_cls: type[Connection]) -> None:
    """Make ``engine``, and its ``execution_options()`` copies, hand out ``connection_cls``.

    The one place the engine's private ``_connection_cls`` and ``_option_cls`` are
    set. ``connection_cls`` subclasses whatever the engine handed out before (here,
    :class:`_Connection`), so the steps add up.
    """

    class ConnectionsOptionEngine(engine._option_cls):  # type: ignore[name-defined,misc]
        """An engine with other execution options that hands out ``connection_cls``."""

        _connection_cls = connection_cls

    ConnectionsOptionEngine._option_cls = ConnectionsOptionEngine
    engine._connection_cls = connection_cls
    engine._option_cls = ConnectionsOptionEngine


class _Connection(Connection):
    """A connection that keeps its transaction's failed statements (see the module).

    Each step runs where SQLAlchemy fires the connection event of the same name.
    """

    #: The current transaction's marks, once it used a SAVEPOINT or saw a failure.
    _portside_marks: _Marks | None = None

    def _begin_impl(self, transaction: RootTransaction) -> None:
        self._portside_marks = None  # a new transaction starts clean
        super()._begin_impl(transaction)

    def _commit_impl(self) -> None:
        if self._portside_marks is not None:
            _commit(self)
        super()._commit_impl()

    def _savepoint_impl(self, name: str | None = None) -> str:
        _savepoint(self, name)
        return super()._savepoint_impl(name)

    def _rollback_to_savepoint_impl(self, name: str) -> None:
        _rollback_savepoint(self, name, None)
        super()._rollback_to_savepoint_impl(name)

    def _release_savepoint_impl(self, name: str) -> None:
        _release_savepoint(self, name, None)
        super()._release_savepoint_impl(name)


def _marks(connection: Connection) -> _Marks | None:
    # SQLAlchemy itself insists on a rollback on an invalidated connection.
    if connection.invalidated:
        return None
    marks: _Marks | None = getattr(connection, _KEY, None)
    return marks


def _savepoint(connection: Connection, _name: str | None) -> None:
    if connection.invalidated:
        return
    marks = getattr(connection, _KEY, None)
    if marks is None:
        marks = _Marks()
        setattr(connection, _KEY, marks)
    refused, marks.refused = marks.refused, None
    current = connection.get_nested_transaction()
    if current is not None and current is refused:
        # A refused SAVEPOINT that nobody rolled back (a session's own, joined to an
        # outer transaction, is only closed): SQLAlchemy would refuse every new
        # SAVEPOINT until it is. It is undone on the server already; detach it.
        current.rollback()
    marks.depth += 1


def _rollback_savepoint(connection: Connection, _name: str, _context: Any) -> None:
    marks = _marks(connection)
    if marks is None or marks.depth == 0:
        return
    if marks.failed_at is not None and marks.failed_at >= marks.depth:
        marks.failed_at = None  # the failure happened after this SAVEPOINT began
    marks.depth -= 1


def _release_savepoint(connection: Connection, name: str, _context: Any) -> None:
    marks = _marks(connection)
    if marks is None or marks.depth == 0:
        return
    if marks.failed_at is None or marks.failed_at < marks.depth:
        marks.depth -= 1
        return
    # Undo the SAVEPOINT (PostgreSQL would refuse the RELEASE anyway), so that the
    # transaction around it is usable again, e.g. the outer transaction of a test.
    dialect = connection.dialect
    dialect.do_rollback_to_savepoint(connection, name)
    dialect.do_release_savepoint(connection, name)
    failure = marks.failure
    marks.failed_at = None
    marks.depth -= 1
    marks.refused = connection.get_nested_transaction()
    raise TransactionAbortedError.after(failure)


def _commit(connection: Connection) -> None:
    marks = _marks(connection)
    if marks is None:
        return
    setattr(connection, _KEY, None)
    if marks.failed_at is None:
        return
    # SQLAlchemy emits no ROLLBACK after a failed commit: do it here, or the
    # connection would go back to the pool inside the aborted transaction.
    try:
        connection.dialect.do_rollback(connection.connection)
    except Exception as exc:
        connection.invalidate(exc)
        raise TransactionAbortedError.after(marks.failure) from exc
    raise TransactionAbortedError.after(marks.failure)


def _note_failure(context: ExceptionContext) -> None:
    connection = context.connection
    if connection is None or context.is_disconnect or not connection.in_transaction():
        return
    if connection.invalidated:
        return
    marks = getattr(connection, _KEY, None)
    if marks is None:
        marks = _Marks()
        setattr(connection, _KEY, marks)
    compiled = getattr(context.execution_context, "compiled", None)
    if marks.depth and isinstance(getattr(compiled, "statement", None), SavepointClause):
        marks.depth -= 1  # the SAVEPOINT that failed was never opened
    if marks.failed_at is None or marks.depth < marks.failed_at:
        marks.failed_at = marks.depth
        marks.failure = _one_line(context)


def _one_line(context: ExceptionContext) -> str:
    """The failure's SQLAlchemy class and the first line of the driver's message."""
    name = type(context.sqlalchemy_exception or context.original_exception).__name__
    lines = str(context.original_exception).strip().splitlines()
    return f"{name}: {lines[0]}" if lines else name
