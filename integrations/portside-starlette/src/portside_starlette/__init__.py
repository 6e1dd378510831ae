"""Starlette integration for portside: one ``install``, session accessors, the lifecycle.

:func:`install` wires everything into an app: a new :class:`~portside.Lifecycle` per
start (engines built and checked before the app serves, drained and disposed
after), the unit of work *outermost* (it commits before the response starts and
turns a failed commit into a 5xx; a status >= 400 or an exception rolls back), 503
answers for a database that cannot serve, and a readiness route::

    from contextlib import asynccontextmanager

    from sqlmodel import Field, SQLModel
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    import portside_starlette
    from portside import DatabaseSettings, Lifecycle

    class Hero(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str

    async def create_hero(request: Request) -> JSONResponse:
        hero = Hero.model_validate(await request.json())
        session = await portside_starlette.async_session(request)
        session.add(hero)  # committed before the client sees the 201
        await session.flush()
        return JSONResponse(hero.model_dump(), status_code=201)

    @asynccontextmanager
    async def lifespan(app: Starlette, lifecycle: Lifecycle):
        await lifecycle.database().create_all(SQLModel.metadata)
        yield

    app = Starlette(routes=[Route("/heroes", create_hero, methods=["POST"])])
    portside_starlette.install(app, DatabaseSettings(url="sqlite:///heroes.db"), lifespan=lifespan)

Sync code gets ``await portside_starlette.session(request)`` and uses it in a worker
thread (``run_in_threadpool``); a ``def`` endpoint, which Starlette runs in a worker
thread, uses :func:`session_from_thread`. A sync session used on the event loop
raises :class:`~portside.BlockingSessionError`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, cast

import anyio.from_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

import portside
from portside import (
    AsyncSession,
    Databases,
    Lifecycle,
    LifecycleStateError,
    Session,
)
from portside.asgi import (
    DATABASE_ERRORS,
    LifecycleLifespan,
    TransactionOptions,
    UnitOfWorkMiddleware,
    answer_database_error,
    lifecycle_from_state,
    lifespan_state,
    unit_of_work_from_scope,
)
from portside.retries import Retries

__all__ = [
    "async_session",
    "get_lifecycle",
    "install",
    "readiness",
    "session",
    "session_from_thread",
    "transaction",
    "use_primary",
]

AppT = TypeVar("AppT", bound=Starlette)
#: The app's own lifespan, run inside portside's with the running lifecycle.
Lifespan = Callable[[AppT, Lifecycle], AbstractAsyncContextManager[Mapping[str, Any] | None]]

_APP_STATE_KEY = "portside_lifecycle"
#: A Starlette endpoint function: ``async def`` or ``def``, taking the request.
Endpoint = Callable[[Request], Awaitable[Response] | Response]


def install(
    app: AppT,
    databases: Databases = None,
    *,
    lifespan: Lifespan[AppT] | None = None,
    readiness_path: str | None = "/health",
    commit_redirects: bool = True,
) -> None:
    """Give ``app`` portside's databases, units of work and readiness route.

    ``databases`` is one :class:`~portside.DatabaseSettings` (named ``"default"``), a
    mapping of names to settings (the first is the default), or ``None`` to read
    ``DATABASE_*`` from the environment at each start. ``lifespan(app, lifecycle)``
    is your own lifespan: it runs once the databases answer (e.g. to create tables)
    and may yield state; a lifespan given to ``Starlette(lifespan=...)`` keeps
    running too, inside portside's. ``readiness_path=None`` adds no readiness route;
    ``commit_redirects=False`` rolls back 3xx responses.

    Call it once, before the app serves its first request.
    """
    if hasattr(app.state, _APP_STATE_KEY) or app.middleware_stack is not None:
        raise LifecycleStateError(
            "portside install() must be called once per app, before the app has started."
        )
    setattr(app.state, _APP_STATE_KEY, None)
    original_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def keep_on_app(lifecycle: Lifecycle) -> AsyncIterator[None]:
        setattr(app.state, _APP_STATE_KEY, lifecycle)
        try:
            yield
        finally:
            setattr(app.state, _APP_STATE_KEY, None)

    @asynccontextmanager
    async def portside_lifespan(asgi_app: Any) -> AsyncIterator[dict[str, Any]]:
        inner: list[LifecycleLifespan] = [keep_on_app, lambda _: original_lifespan(asgi_app)]
        if lifespan is not None:
            inner.append(lambda lifecycle: lifespan(app, lifecycle))
        async with lifespan_state(databases, *inner) as state:
            yield state

    app.router.lifespan_context = portside_lifespan
    build_stack = app.build_middleware_stack

    def build_with_unit_of_work() -> Any:
        # Outermost, outside Starlette's ServerErrorMiddleware: the commit decision
        # then reads the status the client really gets, whichever handler made it.
        return UnitOfWorkMiddleware(build_stack(), commit_redirects=commit_redirects)

    app.build_middleware_stack = build_with_unit_of_work  # type: ignore[method-assign]
    for exc_type in DATABASE_ERRORS:
        if exc_type not in app.exception_handlers:
            app.add_exception_handler(exc_type, _database_error)
    if readiness_path is not None:
        app.add_route(readiness_path, readiness, include_in_schema=False)


def get_lifecycle(source: HTTPConnection | Starlette) -> Lifecycle:
    """The running :class:`~portside.Lifecycle`, from a request, a websocket or the app.

    Work outside a request's unit of work (a websocket message, a background task)
    opens its own: ``async with get_lifecycle(websocket).async_session() as session:``.
    """
    if isinstance(source, HTTPConnection):
        return lifecycle_from_state(source.scope)
    lifecycle = getattr(source.state, _APP_STATE_KEY, None)
    if not isinstance(lifecycle, Lifecycle):
        raise LifecycleStateError(
            "This app has no running portside lifecycle: install portside on it "
            "(portside_starlette.install(app, ...) or portside_fastapi.install(app, ...)) "
            "and run its lifespan (a server, or `with TestClient(app):` in tests)."
        )
    return lifecycle


async def async_session(connection: HTTPConnection, name: str | None = None) -> AsyncSession:
    """The request's async session for database ``name`` (``None``: the default).

    Asking again in the same request gives the same session. A websocket has no
    request session: it opens a unit per message (see :func:`get_lifecycle`).
    """
    return await unit_of_work_from_scope(connection.scope).async_session(name)


async def session(connection: HTTPConnection, name: str | None = None) -> Session:
    """The request's sync session for database ``name``, asked for on the event loop.

    Use it only in a worker thread, e.g. ``await run_in_threadpool(work, session)``:
    on the event loop it raises at its first query.
    """
    return await unit_of_work_from_scope(connection.scope).session(name)


def session_from_thread(connection: HTTPConnection, name: str | None = None) -> Session:
    """:func:`session` for a ``def`` endpoint, which Starlette runs in a worker thread."""
    return anyio.from_thread.run(session, connection, name)


def use_primary(connection: HTTPConnection) -> None:
    """Make this request read (and write) on the primary, not a read replica.

    A GET, HEAD, OPTIONS or TRACE request reads from a replica when the database has
    some; call this before the request's first query when it must see the primary
    (or write). Nothing changes for a database without replicas.
    """
    unit_of_work_from_scope(connection.scope).use_primary()


async def readiness(request: Request) -> JSONResponse:
    """Ping every database: 200 if all answer, else 503 naming the ones down.

    :func:`install` mounts it at ``/health``; the body lists each database's
    status and pool counters, never a URL or secret.
    """
    status_code, body = portside.readiness(await get_lifecycle(request).ping())
    return JSONResponse(body, status_code=status_code)


def transaction(
    *,
    retries: Retries = None,
    isolation_level: str | None = None,
    deadline: float | None = None,
) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint to give its request's unit of work these options.

    ``Route("/counter", transaction(retries=3, isolation_level="SERIALIZABLE")(bump))``.
    ``retries`` (a :class:`~portside.RetryPolicy` or a number of retries) reruns the
    endpoint, with the request body replayed, when its unit lost a race
    (serialization failure, deadlock) before the response started;
    ``isolation_level`` applies to its transactions; ``deadline`` (seconds) replaces
    ``DATABASE_DEADLINE``. A ``def`` endpoint still runs in a worker thread.
    """
    options = TransactionOptions(retries, isolation_level, deadline)

    def decorate(endpoint: Endpoint) -> Endpoint:
        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def with_options(request: Request) -> Response:
                options.apply(request.scope)
                return cast(Response, await endpoint(request))

            return with_options

        @functools.wraps(endpoint)
        async def in_thread_with_options(request: Request) -> Response:
            options.apply(request.scope)
            return cast(Response, await run_in_threadpool(endpoint, request))

        return in_thread_with_options

    return decorate


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database's failure (503/409/504) answered; a bug goes on to the 500 handler."""
    reply = answer_database_error(request.scope, exc)
    if reply is None:
        raise exc
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
