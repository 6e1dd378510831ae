"""Leak checks: a test must give back every connection and unit of work it took.

Run after the test body and *before* the lifecycles shut down: disposal would
hide a connection nobody returned (SQLAlchemy only warns about it later, from the
garbage collector, far from the code that leaked it).
"""

from __future__ import annotations

from collections.abc import Iterable

from portside import Lifecycle
from portside_testing.outer_transaction import OuterTransaction

__all__ = ["ConnectionLeakError", "check_for_leaks", "find_leaks"]

_ADVICE = (
    "Close what you open: `async with engine.connect() as connection:`, "
    "`async with lifecycle.async_session() as session:`, and end every unit of work "
    "you start with `await unit.finish(commit=...)`."
)


class ConnectionLeakError(AssertionError):
    """A test ended with a connection checked out or a unit of work still open.

    An ``AssertionError``, so pytest reports the test as failed with this message.
    """


def find_leaks(lifecycle: Lifecycle) -> list[str]:
    """Describe what ``lifecycle`` still holds beyond its test's outer transaction.

    Counts connections checked out of each engine's pool, minus the one the outer
    transaction itself holds, and units of work that were opened and never
    finished. A lifecycle that is not running has nothing left to check.
    """
    if not lifecycle.running:
        return []
    problems: list[str] = []
    if lifecycle.in_flight:
        problems.append(
            f"{lifecycle.in_flight} unit(s) of work opened a session and never finished"
        )
    outer = lifecycle.binding if isinstance(lifecycle.binding, OuterTransaction) else None
    for name in lifecycle.names:
        database = lifecycle.database(name)
        for kind, status in database.pool_status().items():
            if status.checked_out is None:  # a pool that does not count
                continue
            engine = database.engine if kind == "sync" else database.async_engine.sync_engine
            held = outer.held_connections(engine) if outer is not None else 0
            leaked = status.checked_out - held
            if leaked > 0:
                problems.append(
                    f"database {name!r} ({database.masked_url}), {kind} engine: "
                    f"{leaked} connection(s) checked out and never returned"
                )
    return problems


def check_for_leaks(lifecycles: Iterable[Lifecycle], *, when: str) -> None:
    """Raise :class:`ConnectionLeakError` listing every leak of ``lifecycles``.

    ``when`` says where the check ran, for the message (e.g. "at the end of the test").
    """
    __tracebackhide__ = True  # pytest: show the test, not this function
    problems = [problem for lifecycle in lifecycles for problem in find_leaks(lifecycle)]
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise ConnectionLeakError(
            f"portside: the test leaked database resources (checked {when}, "
            f"before shutdown):\n{listing}\n{_ADVICE}"
        )
