"""After-commit and after-rollback callbacks of a unit of work.

Code inside a unit (a handler, a service that only has a session) registers a
callback with :func:`on_commit` or :func:`on_rollback` (or the unit's methods of
the same names). When the unit ends, the callbacks of the outcome run in the order
they were registered, the others are dropped:

* a callback registered inside a SAVEPOINT (``session.begin_nested()``) that is
  rolled back is dropped, since what it announces never happened;
* each callback runs once; one that raises is logged in one line and the others
  still run: the commit is done, so a failing callback never changes the response;
* sync callbacks run on the calling thread (the event loop, for async code):
  keep them short, e.g. enqueue a job, or make them ``async``.

When they run: :meth:`UnitOfWork.finish` runs them right after the commit; a web
request's run after its response was sent (the client does not wait for them, and
the data they announce is already committed). Callbacks a unit cannot run (the
task was cancelled, or an async callback met a thread with no event loop) are
logged by name, never dropped silently.

The test kit's :func:`capture` (``portside_testing.capture_on_commit``) collects
the after-commit callbacks instead of running them.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
from sqlalchemy import event
from sqlalchemy.orm import SessionTransaction

from portside.database import one_line
from portside.errors import LifecycleStateError
from portside.sessions import AsyncSession, Session, _EndableSession
from portside.urls import scrub

__all__ = ["Callback", "on_commit", "on_rollback"]

logger = logging.getLogger("portside")

#: A callback: a function of no arguments, sync or async.
Callback = Callable[[], Awaitable[object] | object]


@dataclass(slots=True)
class _Registered:
    callback: Callback
    #: The innermost SAVEPOINT open when it was registered (None: the transaction).
    savepoint: SessionTransaction | None


def _name(callback: Callback) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


class Hooks:
    """The callbacks one unit of work registered, by outcome."""

    __slots__ = ("commit", "rollback")

    def __init__(self) -> None:
        self.commit: list[_Registered] = []
        self.rollback: list[_Registered] = []

    def add(self, outcome: str, callback: Callback, savepoint: SessionTransaction | None) -> None:
        if not callable(callback):
            raise TypeError(f"on_{outcome}() needs a callable, got {callback!r}")
        (self.commit if outcome == "commit" else self.rollback).append(
            _Registered(callback, savepoint)
        )

    def drop_savepoint(self, savepoint: SessionTransaction) -> None:
        """Forget what was registered inside ``savepoint`` (it was rolled back)."""
        for registered in (self.commit, self.rollback):
            registered[:] = [r for r in registered if not _inside(r.savepoint, savepoint)]

    def take(self, *, committed: bool) -> list[Callback]:
        """The callbacks to run for this outcome (once: the lists are emptied)."""
        chosen = self.commit if committed else self.rollback
        callbacks = [r.callback for r in chosen]
        self.commit, self.rollback = [], []
        return callbacks


def _inside(transaction: SessionTransaction | None, savepoint: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is savepoint:
            return True
        transaction = transaction.parent
    return False


def _on_soft_rollback(session: _EndableSession, previous: SessionTransaction) -> None:
    unit = session._portside_unit
    if unit is not None and previous.nested and unit._hooks is not None:
        unit._hooks.drop_savepoint(previous)


# Once, on the class: a session no unit owns, or a unit with no callbacks, costs a check.
event.listen(_EndableSession, "after_soft_rollback", _on_soft_rollback)


def _sync_session(session: Session | AsyncSession) -> _EndableSession:
    return session.sync_session if isinstance(session, AsyncSession) else session


def _register(outcome: str, session: Session | AsyncSession, callback: Callback) -> None:
    sync_session = _sync_session(session)
    if getattr(sync_session, "_portside_ended", False):
        raise LifecycleStateError(
            f"on_{outcome}() was called after the unit of work ended; register "
            "callbacks while its work runs."
        )
    unit = getattr(sync_session, "_portside_unit", None)
    if unit is None:
        raise LifecycleStateError(
            f"on_{outcome}() needs a session of a portside unit of work (a request's "
            "session, or one from lifecycle.async_session()/session()); this session "
            "belongs to none, so nothing would ever run the callback."
        )
    unit._register(outcome, callback, sync_session.get_nested_transaction())


def on_commit(session: Session | AsyncSession, callback: Callback) -> None:
    """Run ``callback`` once the unit of work that owns ``session`` has committed.

    For code that only has a session (a service function). A callback registered
    inside a SAVEPOINT that is rolled back is dropped; if the unit rolls back,
    it never runs. See :mod:`portside.hooks` for when and where it runs.
    """
    _register("commit", session, callback)


def on_rollback(session: Session | AsyncSession, callback: Callback) -> None:
    """Run ``callback`` if the unit of work that owns ``session`` rolls back."""
    _register("rollback", session, callback)


# -- running them --------------------------------------------------------------------

_captures: list[list[Callback]] = []
_captures_lock = threading.Lock()


@contextmanager
def capture(into: list[Callback]) -> Iterator[None]:
    """Put after-commit callbacks into ``into`` instead of running them (the test kit's).

    Process-wide, so it also sees requests served in other tasks or threads; the
    innermost capture gets them.
    """
    with _captures_lock:
        _captures.append(into)
    try:
        yield
    finally:
        with _captures_lock:
            _captures.remove(into)


def _captured(callbacks: list[Callback], *, committed: bool) -> bool:
    if not committed or not _captures:
        return False
    with _captures_lock:
        if not _captures:
            return False
        _captures[-1].extend(callbacks)
    return True


def _failed(outcome: str, callback: Callback, exc: BaseException) -> None:
    logger.error(
        "an after-%s callback %s failed: %s",
        outcome,
        _name(callback),
        scrub(one_line(exc)),
        exc_info=logger.isEnabledFor(logging.DEBUG) and exc,
    )


def _not_run(outcome: str, callbacks: list[Callback], why: str) -> None:
    if callbacks:
        logger.error(
            "%d after-%s callback(s) did not run (%s): %s",
            len(callbacks),
            outcome,
            why,
            ", ".join(_name(c) for c in callbacks),
        )


async def run(callbacks: list[Callback], *, committed: bool) -> None:
    """Run ``callbacks`` in order; log each failure; log what cancellation left."""
    if not callbacks or _captured(callbacks, committed=committed):
        return
    outcome = "commit" if committed else "rollback"
    pending = list(callbacks)
    try:
        while pending:
            callback = pending[0]
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                _failed(outcome, callback, exc)
            pending.pop(0)
    except BaseException:
        _not_run(outcome, pending, "cancelled")
        raise


def run_blocking(callbacks: list[Callback], *, committed: bool) -> None:
    """:func:`run` from a worker thread: async callbacks go to its event loop, if any."""
    if not callbacks or _captured(callbacks, committed=committed):
        return
    outcome = "commit" if committed else "rollback"
    for index, callback in enumerate(callbacks):
        try:
            result = callback()
            if inspect.isawaitable(result):
                _await_from_thread(result)
        except _NoEventLoopError:
            _not_run(outcome, callbacks[index:], "an async callback needs an event loop")
            return
        except Exception as exc:
            _failed(outcome, callback, exc)


class _NoEventLoopError(Exception):
    pass


def _nothing() -> None:
    pass


def _await_from_thread(awaitable: Awaitable[Any]) -> None:
    async def wait() -> None:
        await awaitable

    try:
        anyio.from_thread.run_sync(_nothing)  # is there an event loop to hand it to?
    except RuntimeError as exc:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise _NoEventLoopError from exc
    anyio.from_thread.run(wait)
