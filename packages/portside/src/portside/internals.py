"""Every private or undocumented name of a dependency that portside relies on.

portside overrides two private methods of SQLAlchemy's ``Session`` and six of its
``Connection`` (set as an engine's private ``_connection_cls``), calls one of its
pool's connection records, uses four private names of aiosqlite's
``Connection`` and psycopg's ``Connection.wait``, and a few undocumented hooks of
Starlette, Litestar, psycopg, asyncpg, anyio and SQLAlchemy. A release of one of them
may rename any of these without notice. So each is listed here, with the
versions it was verified on, and ``tests/core/test_internals.py`` checks every one of
them against the installed versions and names the dependency and version when one is
gone. The package's dependency bounds (``sqlalchemy<2.2``, ``aiosqlite<0.23``,
``psycopg<3.4``) cover the verified ranges.

Where a name differs between supported versions, the shim below picks whichever the
installed version has (SQLAlchemy 2.1 renamed ``await_only`` to ``await_``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy.util
from sqlalchemy.util.concurrency import in_greenlet

__all__ = ["INTERNALS", "Internal", "await_", "in_greenlet", "missing", "problem"]

_T = TypeVar("_T")


def _pick_await() -> Callable[[Awaitable[Any]], Any]:
    # 2.1 names it await_ (await_only stays as an alias, deprecated from 2.2); 2.0
    # has only await_only. Both run a coroutine from inside SQLAlchemy's greenlet.
    found = getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only
    return found


#: Await ``awaitable`` from sync code running in SQLAlchemy's greenlet
#: (``sqlalchemy.util.await_`` on 2.1, ``await_only`` on 2.0).
await_: Callable[[Awaitable[_T]], _T] = _pick_await()


@dataclass(frozen=True)
class Internal:
    """One private (or undocumented) name of a dependency that portside uses.

    ``owner`` is the dotted path of the module or class that has it; ``name`` the
    attribute (or, with ``kind="scope key"``, the ASGI scope key the framework sets);
    ``verified`` the version range it was checked on; ``parameters`` the leading
    parameter names portside calls or overrides it with, when it is a method.
    """

    dependency: str
    owner: str
    name: str
    verified: str
    used_by: str
    parameters: tuple[str, ...] = ()
    kind: str = "attribute"  # "attribute", "instance attribute" or "scope key"


#: What the five ``Connection`` steps of ``adapters.failed_statements`` are for.
_FAILED_STATEMENTS = (
    "adapters.failed_statements: keep a transaction's failed statements where the "
    "connection event of the same name fires, without the per-connection cost of an "
    "engine-level connection listener"
)

INTERNALS: tuple[Internal, ...] = (
    Internal(
        "sqlalchemy",
        "sqlalchemy.orm.Session",
        "_autobegin_t",
        ">=2.0.38,<2.2",
        "portside.sessions: refuse an ended unit's session, and a sync session on the "
        "event loop, at the one place every operation begins its transaction",
        parameters=("self", "begin"),
    ),
    Internal(
        "sqlalchemy",
        "sqlalchemy.orm.Session",
        "_connection_for_bind",
        ">=2.0.38,<2.2",
        "portside.sessions: pass the unit's gates before a session's first connection",
        parameters=("self", "engine", "execution_options"),
    ),
    Internal(
        "sqlalchemy",
        "sqlalchemy.pool.base._ConnectionRecord",
        "get_connection",
        ">=2.0.38,<2.2",
        "adapters.postgresql: open a new connection in a lost one's place under the same "
        "checkout, as SQLAlchemy's own pre-ping does, for a first statement run again",
        parameters=("self",),
    ),
    *(
        Internal(
            "sqlalchemy",
            "sqlalchemy.engine.Connection",
            name,
            ">=2.0.38,<2.2",
            _FAILED_STATEMENTS,
            parameters=parameters,
        )
        for name, parameters in (
            ("_begin_impl", ("self", "transaction")),
            ("_commit_impl", ("self",)),
            ("_savepoint_impl", ("self", "name")),
            ("_rollback_to_savepoint_impl", ("self", "name")),
            ("_release_savepoint_impl", ("self", "name")),
        )
    ),
    Internal(
        "sqlalchemy",
        "sqlalchemy.engine.Connection",
        "_execute_context",
        ">=2.0.38,<2.2",
        "portside.telemetry: note when each statement ends (the held-connection watch) "
        "without the per-connection cost of an engine-level connection listener",
        parameters=("self", "dialect", "constructor", "statement", "parameters"),
    ),
    Internal(
        "sqlalchemy",
        "sqlalchemy.engine.Engine",
        "_connection_cls",
        ">=2.0.38,<2.2",
        "adapters.failed_statements: make an engine (and its execution_options() "
        "copies) hand out portside's Connection subclass",
    ),
    Internal(
        "sqlalchemy",
        "sqlalchemy.engine.Engine",
        "_option_cls",
        ">=2.0.38,<2.2",
        "adapters.failed_statements: make an engine (and its execution_options() "
        "copies) hand out portside's Connection subclass",
    ),
    Internal(
        "sqlalchemy",
        "sqlalchemy.util.concurrency",
        "in_greenlet",
        ">=2.0.38,<2.2",
        "portside.sessions: an async session's gates wait only inside the greenlet",
    ),
    Internal(
        "sqlalchemy",
        "sqlalchemy.util",
        "await_only",
        ">=2.0.38,<2.2",
        "portside.unit_of_work, adapters.postgresql: await from SQLAlchemy's greenlet "
        "(through the await_ shim: 2.1 also names it await_)",
    ),
    Internal(
        "aiosqlite",
        "aiosqlite.Connection",
        "_execute",
        ">=0.22.0,<0.23",
        "adapters.aiosqlite_connection: run a deferred BEGIN in the statement's trip",
        parameters=("self", "fn"),
    ),
    Internal(
        "aiosqlite",
        "aiosqlite.Connection",
        "_conn",
        ">=0.22.0,<0.23",
        "adapters.aiosqlite_connection: the sqlite3 connection, on aiosqlite's thread",
    ),
    Internal(
        "aiosqlite",
        "aiosqlite.Connection",
        "_connection",
        ">=0.22.0,<0.23",
        "adapters.aiosqlite_connection: read in_transaction without a trip",
        kind="instance attribute",
    ),
    Internal(
        "aiosqlite",
        "aiosqlite.Connection",
        "_thread",
        ">=0.22.0,<0.23",
        "adapters.aiosqlite_connection: make the worker thread a daemon, as SQLAlchemy does; "
        "join it after a failed connect",
        kind="instance attribute",
    ),
    Internal(
        "aiosqlite",
        "aiosqlite.Connection",
        "_connect",
        ">=0.22.0,<0.23",
        "adapters.aiosqlite_connection: wait for the worker thread to stop after a failed connect",
        parameters=("self",),
    ),
    Internal(
        "psycopg",
        "psycopg.Connection",
        "wait",
        ">=3.3.6,<3.4",
        "adapters.postgresql: bound every wait for the server (DATABASE_STATEMENT_TIMEOUT)",
        parameters=("self", "gen", "interval", "timeout"),
    ),
    Internal(
        "psycopg",
        "psycopg.connection",
        "_WAIT_INTERVAL",
        ">=3.3.6,<3.4",
        "adapters.postgresql: the default of the overridden wait()",
    ),
    Internal(
        "psycopg",
        "psycopg.errors",
        "_WaitTimeout",
        ">=3.3.6,<3.4",
        "adapters.postgresql: what a bounded wait that ran out raises",
    ),
    Internal(
        "asyncpg",
        "asyncpg.Connection",
        "_cancel_current_command",
        ">=0.30,<0.33",
        "interrupts: send a cancel request for the statement a connection runs (a client "
        "that disconnected), as asyncpg's own timeouts do",
        parameters=("self", "waiter"),
    ),
    Internal(
        "anyio",
        "anyio._backends._asyncio",
        "_task_states",
        ">=4.7,<5",
        "disconnects: whether a request's task is inside a shielded cancel scope, which a "
        "native cancellation would go through",
    ),
    Internal(
        "anyio",
        "anyio._backends._asyncio.CancelScope",
        "_parent_scope",
        ">=4.7,<5",
        "disconnects: walk a task's cancel scopes, looking for a shielded one",
        kind="instance attribute",
    ),
    Internal(
        "starlette",
        "starlette.applications.Starlette",
        "build_middleware_stack",
        ">=0.41.0,<2",
        "portside_starlette.install: wrap the stack so the unit of work is outermost",
        parameters=("self",),
    ),
    Internal(
        "litestar",
        "litestar.Litestar",
        "litestar_app",
        ">=2.23.0,<3",
        "portside_litestar: find the app (and its lifecycle) from a connection's scope",
        kind="scope key",
    ),
)


def _version(dependency: str) -> str:
    try:
        return importlib.metadata.version(dependency)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _resolve(path: str) -> Any:
    module, _, attribute = path.rpartition(".")
    try:
        return importlib.import_module(path)
    except ImportError:
        return getattr(importlib.import_module(module), attribute)


def _instance_attributes(owner: type[Any]) -> set[str]:
    # Set in __init__. Building an aiosqlite connection starts nothing (its thread
    # starts on await), nor does an anyio cancel scope: cheap and side-effect free.
    if owner.__module__.startswith("aiosqlite"):
        import sqlite3  # noqa: PLC0415

        return set(vars(owner(lambda: sqlite3.connect(":memory:"), 64)))
    instance = owner()
    names = set(getattr(instance, "__dict__", {}))
    for klass in type(instance).__mro__:  # newer anyio declares __slots__
        slots = getattr(klass, "__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    return names


def missing(internal: Internal) -> str | None:
    """Why ``internal`` no longer holds on the installed versions, or ``None``.

    The message names the dependency, its installed version, the range portside was
    verified on, and what portside uses the name for. A scope key can only be seen
    on a running app: its test checks it and words its failure with :func:`problem`.
    """
    owner = _resolve(internal.owner)
    if internal.kind == "scope key":
        raise ValueError(f"{internal.name!r} is a scope key: check it on a running app")
    if internal.kind == "instance attribute":
        present = internal.name in _instance_attributes(owner)
    else:
        present = hasattr(owner, internal.name)
    if not present:
        return problem(internal, "has no such name")
    if internal.parameters:
        found = tuple(inspect.signature(getattr(owner, internal.name)).parameters)
        if found[: len(internal.parameters)] != internal.parameters:
            return problem(internal, f"its parameters are now {found}, not {internal.parameters}")
    return None


def problem(internal: Internal, what: str) -> str:
    """The message for ``internal`` gone wrong (``what``) on the installed version."""
    version = _version(internal.dependency)
    return (
        f"portside relies on {internal.dependency}'s undocumented "
        f"`{internal.owner}.{internal.name}` ({internal.kind}; verified on "
        f"{internal.dependency} {internal.verified}; used by {internal.used_by}), but "
        f"with {internal.dependency} {version} installed it {what}. Install a version "
        "in the verified range, or update portside."
    )
