"""Starlette integration for portside: a lifespan, a middleware and session accessors.

The lifespan builds the engines at startup (into lifespan state) and disposes them
at shutdown; the middleware commits each request's unit of work *before* the
response starts (and rolls it back for a status >= 400 or an exception); an
endpoint asks for its request's session, which is opened only then::

    from sqlmodel import Field, SQLModel
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    import portside_starlette
    from portside import DatabaseSettings
    from portside_starlette import UnitOfWorkMiddleware, lifespan, readiness

    class Hero(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str

    async def create_hero(request: Request) -> JSONResponse:
        session = await portside_starlette.async_session(request)
        hero = Hero.model_validate(await request.json())
        session.add(hero)  # committed before the client sees the 201
        await session.flush()
        return JSONResponse(hero.model_dump(), status_code=201)

    app = Starlette(
        routes=[Route("/heroes", create_hero, methods=["POST"]), Route("/health", readiness)],
        middleware=[Middleware(UnitOfWorkMiddleware)],
        lifespan=lifespan(DatabaseSettings(url="sqlite:///heroes.db")),
    )

Sync code uses a sync session, and only in a worker thread. In an ``async def``
endpoint (which can read the request body): ``session = await
portside_starlette.session(request)``, then ``await run_in_threadpool(work,
session)``. In a ``def`` endpoint (Starlette runs it in a worker thread):
``session = portside_starlette.session_from_thread(request)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio.from_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

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
    "UnitOfWorkMiddleware",
    "async_session",
    "lifecycle",
    "lifespan",
    "readiness",
    "session",
    "session_from_thread",
]

#: An app's own lifespan, as ``Starlette(lifespan=...)`` takes it (state or none).
AppLifespan = Callable[[Starlette], AbstractAsyncContextManager[Mapping[str, Any] | None]]

_MISSING_MIDDLEWARE = (
    "portside_starlette.lifespan() needs portside's middleware, which commits each "
    "request before its response starts. Add it to the app:\n\n"
    "    Starlette(..., middleware=[Middleware(portside_starlette.UnitOfWorkMiddleware)])\n"
)


def lifespan(
    databases: DatabaseSettings | Mapping[str, DatabaseSettings] | None = None,
    *,
    wrap: AppLifespan | None = None,
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan for ``Starlette(lifespan=...)`` owning the app's databases.

    ``databases`` is one :class:`~portside.DatabaseSettings` (named ``"default"``), a
    mapping of names to settings (the first is the default), or ``None`` to read
    ``DATABASE_*`` from the environment at each startup. Every startup builds a new
    :class:`~portside.Lifecycle` and puts it in lifespan state (never in a global),
    so two apps, or one app started again, each get their own engines.

    ``wrap`` is the app's own lifespan: it runs inside ours (databases ready) and
    the state it yields joins ours. Startup fails with
    :class:`~portside.ConfigurationError` if the app lacks
    :class:`UnitOfWorkMiddleware`, and with :class:`~portside.StartupError` if a
    database does not answer.
    """

    @asynccontextmanager
    async def portside_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # Only a Starlette app lists its middleware; a bare Router wraps its own.
        if isinstance(app, Starlette) and not has_unit_of_work_middleware(
            m.cls for m in app.user_middleware
        ):
            raise ConfigurationError(_MISSING_MIDDLEWARE)
        async with lifespan_state(databases, wrap(app) if wrap else None) as state:
            yield state

    return portside_lifespan


def lifecycle(request: Request) -> Lifecycle:
    """The running lifecycle, e.g. for a background task's own unit of work."""
    return lifecycle_from_state(request.scope)


async def async_session(request: Request, name: str | None = None) -> AsyncSession:
    """The request's async session for database ``name`` (``None``: the default).

    Asking again in the same request gives the same session.
    """
    return await unit_of_work_from_scope(request.scope).async_session(name)


async def session(request: Request, name: str | None = None) -> Session:
    """The request's sync session for database ``name``, asked for on the event loop.

    Does no I/O itself; use the session only in a worker thread, e.g. ``await
    run_in_threadpool(work, session)``, never on the event loop.
    """
    return await unit_of_work_from_scope(request.scope).session(name)


def session_from_thread(request: Request, name: str | None = None) -> Session:
    """:func:`session` for a ``def`` endpoint, which Starlette runs in a worker thread.

    The session is handed out on the event loop, where the unit of work lives.
    """
    return anyio.from_thread.run(session, request, name)


async def readiness(request: Request) -> JSONResponse:
    """Readiness endpoint: ping every database; 200 if all answer, else 503.

    Mount it where you like: ``Route("/health", readiness)``. The body lists each
    database's status and pool counters, never a URL or secret.
    """
    status_code, body = portside.readiness(await lifecycle(request).ping())
    return JSONResponse(body, status_code=status_code)
