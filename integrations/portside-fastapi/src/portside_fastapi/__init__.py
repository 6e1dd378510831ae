"""FastAPI integration for portside: one ``install``, session dependencies, the lifecycle.

:func:`install` wires everything into an app: a new :class:`~portside.Lifecycle` per
start (engines built and checked before the app serves, drained and disposed
after), the unit of work *outermost* (it commits before the response starts and
turns a failed commit into a 5xx; a status >= 400 or an exception rolls back), 503
answers for a database that cannot serve, and a readiness route::

    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from sqlmodel import Field, SQLModel

    import portside_fastapi
    from portside import DatabaseSettings, Lifecycle
    from portside_fastapi import AsyncSessionDep

    class Hero(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str

    @asynccontextmanager
    async def lifespan(app: FastAPI, lifecycle: Lifecycle):
        await lifecycle.database().create_all(SQLModel.metadata)
        yield

    app = FastAPI()
    portside_fastapi.install(app, DatabaseSettings(url="sqlite:///heroes.db"), lifespan=lifespan)

    @app.post("/heroes", status_code=201)
    async def create_hero(hero: Hero, session: AsyncSessionDep) -> Hero:
        session.add(hero)  # committed before the client sees the 201
        await session.flush()
        return hero

Sync (``def``) endpoints take :data:`SessionDep`; FastAPI runs them in a worker
thread, where sync I/O belongs (a sync session used on the event loop raises
:class:`~portside.BlockingSessionError`). Another database's session comes from
:func:`async_session_dependency` / :func:`session_dependency`; the lifecycle from
:data:`LifecycleDep` or :func:`get_lifecycle`, in HTTP and websocket endpoints alike.

Why not a ``yield`` dependency: FastAPI runs its exit code after the response is
sent (too late to turn a failed commit into a 5xx), and a dependency cannot see the
status of a response the handler *returns*.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse

import portside
import portside_starlette
from portside import AsyncSession, Databases, Lifecycle, Session
from portside.asgi import TransactionOptions, lifecycle_from_state, unit_of_work_from_scope
from portside.retries import Retries

__all__ = [
    "AsyncSessionDep",
    "LifecycleDep",
    "SessionDep",
    "async_session_dependency",
    "get_lifecycle",
    "install",
    "readiness",
    "session_dependency",
    "transaction",
    "use_primary",
]

#: The app's own lifespan, run inside portside's with the running lifecycle.
Lifespan = Callable[[FastAPI, Lifecycle], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def install(
    app: FastAPI,
    databases: Databases = None,
    *,
    lifespan: Lifespan | None = None,
    readiness_path: str | None = "/health",
    commit_redirects: bool = True,
) -> None:
    """Give ``app`` portside's databases, units of work and readiness route.

    ``databases`` is one :class:`~portside.DatabaseSettings` (named ``"default"``), a
    mapping of names to settings (the first is the default), or ``None`` to read
    ``DATABASE_*`` from the environment at each start. ``lifespan(app, lifecycle)``
    is your own lifespan: it runs once the databases answer (e.g. to create tables)
    and may yield state; a lifespan given to ``FastAPI(lifespan=...)`` keeps running
    too, inside portside's. ``readiness_path=None`` adds no readiness route;
    ``commit_redirects=False`` rolls back 3xx responses.

    Call it once, before the app serves its first request. FastAPI is Starlette, so
    this is :func:`portside_starlette.install` with the readiness route as a FastAPI
    route (hidden from the OpenAPI schema).
    """
    portside_starlette.install(
        app,
        databases,
        lifespan=lifespan,
        readiness_path=None,
        commit_redirects=commit_redirects,
    )
    if readiness_path is not None:
        app.add_api_route(readiness_path, readiness, include_in_schema=False)


def get_lifecycle(source: HTTPConnection | FastAPI) -> Lifecycle:
    """The running :class:`~portside.Lifecycle`, from a request, a websocket or the app.

    Work outside a request's unit of work (a websocket message, a background task)
    opens its own: ``async with get_lifecycle(websocket).async_session() as session:``.
    """
    return portside_starlette.get_lifecycle(source)


async def _lifecycle(connection: HTTPConnection) -> Lifecycle:
    return lifecycle_from_state(connection.scope)


@functools.cache
def async_session_dependency(
    name: str | None = None,
) -> Callable[[HTTPConnection], Coroutine[Any, Any, AsyncSession]]:
    """A dependency giving the request's async session for database ``name``.

    ``Annotated[AsyncSession, Depends(async_session_dependency("analytics"))]``.
    ``None`` is the default database. Asking twice in one request gives one session.
    """

    async def request_async_session(connection: HTTPConnection) -> AsyncSession:
        return await unit_of_work_from_scope(connection.scope).async_session(name)

    return request_async_session


@functools.cache
def session_dependency(
    name: str | None = None,
) -> Callable[[HTTPConnection], Coroutine[Any, Any, Session]]:
    """A dependency giving the request's sync session for database ``name``.

    For sync (``def``) endpoints, which FastAPI runs in worker threads; used on the
    event loop (in an ``async def`` endpoint) it raises at its first query.
    """

    async def request_session(connection: HTTPConnection) -> Session:
        return await unit_of_work_from_scope(connection.scope).session(name)

    return request_session


#: The request's async session on the default database.
AsyncSessionDep = Annotated[AsyncSession, Depends(async_session_dependency())]
#: The request's sync session on the default database, for sync (``def``) endpoints.
SessionDep = Annotated[Session, Depends(session_dependency())]
#: The running lifecycle, in HTTP and websocket endpoints.
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]


def use_primary(connection: HTTPConnection) -> None:
    """Make this request read (and write) on the primary, not a read replica.

    A GET, HEAD, OPTIONS or TRACE request reads from a replica when the database has
    some; call this before the request's first query when it must see the primary
    (or write), or declare it on the route: ``dependencies=[Depends(use_primary)]``.
    Nothing changes for a database without replicas.
    """
    portside_starlette.use_primary(connection)


def transaction(
    *,
    retries: Retries = None,
    isolation_level: str | None = None,
    deadline: float | None = None,
) -> Any:
    """A route dependency giving the request's unit of work these options.

    ``@app.post("/counter", dependencies=[transaction(retries=3, isolation_level=
    "SERIALIZABLE")])``: a route's ``dependencies`` run before its parameters'
    (sessions included), so the options apply from the unit's first statement.
    ``retries`` (a :class:`~portside.RetryPolicy` or a number of retries) reruns the
    route, with the request body replayed, when its unit lost a race (serialization
    failure, deadlock) before the response started; ``isolation_level`` applies to
    its transactions; ``deadline`` (seconds) replaces ``DATABASE_DEADLINE``.
    """
    options = TransactionOptions(retries, isolation_level, deadline)

    async def portside_transaction(connection: HTTPConnection) -> None:
        options.apply(connection.scope)

    return Depends(portside_transaction)


async def readiness(lifecycle: LifecycleDep) -> JSONResponse:
    """Ping every database: 200 if all answer, else 503 naming the ones down."""
    status_code, body = portside.readiness(await lifecycle.ping())
    return JSONResponse(body, status_code=status_code)
