"""FastAPI integration for portside: a lifespan, a middleware and session dependencies.

The lifespan builds the engines at startup and disposes them at shutdown; the
middleware commits each request's unit of work *before* the response starts (and
rolls it back for a status >= 400 or an exception); the dependencies hand a
handler its request's session, opened only when a handler asks for it::

    from fastapi import FastAPI
    from sqlmodel import Field, SQLModel

    from portside import DatabaseSettings
    from portside_fastapi import AsyncSessionDep, UnitOfWorkMiddleware, lifespan, readiness

    class Hero(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str

    app = FastAPI(lifespan=lifespan(DatabaseSettings(url="sqlite:///heroes.db")))
    app.add_middleware(UnitOfWorkMiddleware)
    app.add_api_route("/health", readiness)

    @app.post("/heroes", status_code=201)
    async def create_hero(hero: Hero, session: AsyncSessionDep) -> Hero:
        session.add(hero)  # committed before the client sees the 201
        await session.flush()
        return hero

Sync endpoints take :data:`SessionDep` instead; FastAPI runs them in a worker
thread, where the sync session's I/O belongs. Another database's session comes from
:func:`async_session_dependency` / :func:`session_dependency`.

Why a middleware and not a ``yield`` dependency: FastAPI runs a yield dependency's
exit code after the response is sent (too late to turn a failed commit into a 5xx),
and a dependency cannot see the status of a response the handler *returns*.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

import portside
from portside import AsyncSession, ConfigurationError, DatabaseSettings, Lifecycle, Session
from portside.asgi import (
    UnitOfWorkMiddleware,
    has_unit_of_work_middleware,
    lifecycle_from_state,
    lifespan_state,
    unit_of_work_from_scope,
)

__all__ = [
    "AsyncSessionDep",
    "LifecycleDep",
    "SessionDep",
    "UnitOfWorkMiddleware",
    "async_session_dependency",
    "lifespan",
    "readiness",
    "session_dependency",
]

#: An app's own lifespan, as ``FastAPI(lifespan=...)`` takes it (state or none).
AppLifespan = Callable[[FastAPI], AbstractAsyncContextManager[Mapping[str, Any] | None]]

_MISSING_MIDDLEWARE = (
    "portside_fastapi.lifespan() needs portside's middleware, which commits each "
    "request before its response starts. Add this line after creating the app:\n\n"
    "    app.add_middleware(portside_fastapi.UnitOfWorkMiddleware)\n"
)


def lifespan(
    databases: DatabaseSettings | Mapping[str, DatabaseSettings] | None = None,
    *,
    wrap: AppLifespan | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan for ``FastAPI(lifespan=...)`` owning the app's databases.

    ``databases`` is one :class:`~portside.DatabaseSettings` (named ``"default"``), a
    mapping of names to settings (the first is the default), or ``None`` to read
    ``DATABASE_*`` from the environment at each startup. Every startup builds a new
    :class:`~portside.Lifecycle`, so an app started again gets fresh engines.

    ``wrap`` is the app's own lifespan: it runs inside ours (after the databases are
    ready, before they are disposed) and the state it yields joins ours. Code that
    needs the database during startup can instead enter ours inside its own::

        @asynccontextmanager
        async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
            async with portside_fastapi.lifespan(settings)(app) as state:
                lifecycle = state[portside.asgi.LIFECYCLE_STATE_KEY]
                ...  # e.g. create tables through lifecycle.database().async_.engine
                yield state

    Startup fails with :class:`~portside.ConfigurationError` if the app lacks
    :class:`UnitOfWorkMiddleware`, and with :class:`~portside.StartupError` if a
    database does not answer.
    """

    @asynccontextmanager
    async def portside_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if not has_unit_of_work_middleware(m.cls for m in app.user_middleware):
            raise ConfigurationError(_MISSING_MIDDLEWARE)
        async with lifespan_state(databases, wrap(app) if wrap else None) as state:
            yield state

    return portside_lifespan


async def _lifecycle(request: Request) -> Lifecycle:
    return lifecycle_from_state(request.scope)


@functools.cache
def async_session_dependency(
    name: str | None = None,
) -> Callable[[Request], Coroutine[Any, Any, AsyncSession]]:
    """A dependency giving the request's async session for database ``name``.

    ``Annotated[AsyncSession, Depends(async_session_dependency("analytics"))]``.
    ``None`` is the default database. Asking twice in one request gives one session.
    """

    async def request_async_session(request: Request) -> AsyncSession:
        return await unit_of_work_from_scope(request.scope).async_session(name)

    return request_async_session


@functools.cache
def session_dependency(
    name: str | None = None,
) -> Callable[[Request], Coroutine[Any, Any, Session]]:
    """A dependency giving the request's sync session for database ``name``.

    An ``async def`` that does no I/O, so FastAPI resolves it on the event loop; use
    the session only in sync endpoints (worker threads), never in ``async def`` ones.
    """

    async def request_session(request: Request) -> Session:
        return await unit_of_work_from_scope(request.scope).session(name)

    return request_session


#: The request's async session on the default database.
AsyncSessionDep = Annotated[AsyncSession, Depends(async_session_dependency())]
#: The request's sync session on the default database, for sync (``def``) endpoints.
SessionDep = Annotated[Session, Depends(session_dependency())]
#: The running lifecycle, e.g. for background tasks that open their own unit of work.
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]


async def readiness(lifecycle: LifecycleDep) -> JSONResponse:
    """Readiness endpoint: ping every database; 200 if all answer, else 503.

    Mount it at a path of your choice: ``app.add_api_route("/health", readiness)``.
    The body lists each database's status and pool counters, never a URL or secret.
    """
    status_code, body = portside.readiness(await lifecycle.ping())
    return JSONResponse(body, status_code=status_code)
