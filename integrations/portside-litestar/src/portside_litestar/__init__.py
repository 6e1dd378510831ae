"""Litestar integration for portside: one plugin, DI providers, the lifecycle.

:class:`PortsidePlugin` builds the engines when the app starts (a new
:class:`portside.Lifecycle` each time, kept on ``app.state``), disposes them when it
stops, and gives every request one unit of work that commits *before* the response
starts (and rolls back on errors and statuses >= 400)::

    from contextlib import asynccontextmanager

    from litestar import Litestar, post
    from sqlmodel import Field, SQLModel

    from portside import DatabaseSettings, Lifecycle
    from portside_litestar import AsyncSessionDep, PortsidePlugin

    class Visit(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)

    @asynccontextmanager
    async def lifespan(app: Litestar, lifecycle: Lifecycle):
        await lifecycle.database().create_all(SQLModel.metadata)
        yield

    @post("/visits")
    async def add_visit(db_session: AsyncSessionDep) -> dict[str, int | None]:
        visit = Visit()
        db_session.add(visit)
        await db_session.flush()
        return {"id": visit.id}  # committed before the 201 is sent

    app = Litestar(
        [add_visit],
        plugins=[PortsidePlugin(DatabaseSettings(url="sqlite:///app.db"), lifespan=lifespan)],
    )

Litestar injects by parameter name: the plugin provides ``db_session`` (async),
``sync_db_session`` (for handlers declared ``sync_to_thread=True``; used on the event
loop it raises :class:`~portside.BlockingSessionError`) and ``lifecycle``, each
annotated with :data:`AsyncSessionDep`, :data:`SessionDep`, :data:`LifecycleDep`
(the keys are configurable). Another database's session comes from
:func:`async_session_dependency` / :func:`session_dependency`:
``dependencies={"analytics_session": async_session_dependency("analytics")}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import KW_ONLY, dataclass
from typing import Any, cast

from litestar import Litestar, Request, Response, get
from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions.responses import create_debug_response, create_exception_response
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPlugin
from litestar.types import Scope

from portside import (
    AsyncSession,
    Databases,
    Lifecycle,
    LifecycleStateError,
    Session,
    readiness,
)
from portside.asgi import (
    DATABASE_ERRORS,
    LIFECYCLE_STATE_KEY,
    TransactionOptions,
    UnitOfWorkMiddleware,
    answer_database_error,
    unit_of_work_from_scope,
)
from portside.retries import Retries

__all__ = [
    "AsyncSessionDep",
    "LifecycleDep",
    "PortsidePlugin",
    "SessionDep",
    "async_session_dependency",
    "get_lifecycle",
    "session_dependency",
    "transaction",
    "use_primary",
]

#: The app's own lifespan, run inside portside's with the running lifecycle.
Lifespan = Callable[[Litestar, Lifecycle], AbstractAsyncContextManager[None]]

# Litestar deprecates dependencies inferred from a bare type: these mark them.
#: Annotation of a handler parameter receiving an async session (``db_session: AsyncSessionDep``).
AsyncSessionDep = NamedDependency[AsyncSession]
#: Annotation of a sync handler's parameter receiving a sync session.
SessionDep = NamedDependency[Session]
#: Annotation of a handler parameter receiving the running lifecycle (``lifecycle``).
LifecycleDep = NamedDependency[Lifecycle]


def get_lifecycle(source: ASGIConnection[Any, Any, Any, Any] | Litestar) -> Lifecycle:
    """The running :class:`~portside.Lifecycle`, from a request, a websocket or the app.

    Work outside a request's unit of work (a websocket message, a background task)
    opens its own: ``async with get_lifecycle(socket).async_session() as session:``.
    """
    app = source.app if isinstance(source, ASGIConnection) else source
    lifecycle: Lifecycle | None = app.state.get(LIFECYCLE_STATE_KEY)
    if lifecycle is None:
        raise LifecycleStateError(
            "No portside lifecycle on this Litestar app's state: add PortsidePlugin(...) to "
            "the app's plugins and run its lifespan (in tests: `with TestClient(app):`)."
        )
    return lifecycle


def _lifecycle_of_scope(scope: Mapping[str, Any]) -> Lifecycle:
    return get_lifecycle(scope["litestar_app"])


def async_session_dependency(name: str | None = None) -> Provide:
    """A DI provider of the request's async session of database ``name`` (default: first).

    The provider does no I/O (the session connects on first use). A websocket has no
    request session: it opens a unit per message (see :func:`get_lifecycle`).
    """

    async def provide(scope: Scope) -> AsyncSession:
        # The core types ASGI scopes as plain mappings, Litestar as TypedDicts.
        unit = unit_of_work_from_scope(cast("MutableMapping[str, Any]", scope))
        return await unit.async_session(name)

    return Provide(provide)


def session_dependency(name: str | None = None) -> Provide:
    """A DI provider of the request's sync session of database ``name`` (default: first).

    Runs on the event loop and does no I/O; the session must only be used by
    handlers declared with ``sync_to_thread=True`` (on the loop it raises).
    """

    async def provide(scope: Scope) -> Session:
        unit = unit_of_work_from_scope(cast("MutableMapping[str, Any]", scope))
        return await unit.session(name)

    return Provide(provide)


def use_primary(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Make this request read (and write) on the primary, not a read replica.

    A GET, HEAD, OPTIONS or TRACE request reads from a replica when the database has
    some; call this before the request's first query when it must see the primary
    (or write). Nothing changes for a database without replicas.
    """
    unit_of_work_from_scope(cast("MutableMapping[str, Any]", connection.scope)).use_primary()


async def _provide_lifecycle(scope: Scope) -> Lifecycle:
    return get_lifecycle(scope["litestar_app"])


#: The key of a route handler's ``opt`` that :func:`transaction` fills.
_OPT_KEY = "portside_transaction"


def transaction(
    *,
    retries: Retries = None,
    isolation_level: str | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """A route handler's ``opt`` giving its request's unit of work these options.

    ``@post("/counter", opt=transaction(retries=3, isolation_level="SERIALIZABLE"))``.
    ``retries`` (a :class:`~portside.RetryPolicy` or a number of retries) reruns the
    handler, with the request body replayed, when its unit lost a race
    (serialization failure, deadlock) before the response started;
    ``isolation_level`` applies to its transactions; ``deadline`` (seconds) replaces
    ``DATABASE_DEADLINE``. Merge it with other options: ``opt={**transaction(...), ...}``.
    """
    return {_OPT_KEY: TransactionOptions(retries, isolation_level, deadline)}


def _route_options(scope: MutableMapping[str, Any]) -> TransactionOptions | None:
    # Litestar runs app middleware after routing: the handler is known here.
    handler = scope.get("route_handler")
    options = handler.opt.get(_OPT_KEY) if handler is not None else None
    return options if isinstance(options, TransactionOptions) else None


def _database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The database's failure (503/409/504) answered; anything else as Litestar would."""
    reply = answer_database_error(cast("MutableMapping[str, Any]", request.scope), exc)
    if reply is not None:
        return Response(reply.body, status_code=reply.status, headers=reply.headers)
    if (fallback := request.app.exception_handlers.get(500)) is not None:
        return fallback(request, exc)
    if request.app.debug:
        return create_debug_response(request, exc)
    return create_exception_response(request, exc)


async def _readiness(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    status, body = readiness(await get_lifecycle(request.app).ping())
    return Response(body, status_code=status)


@dataclass(eq=False)  # plugins are hashed by identity
class PortsidePlugin(InitPlugin):
    """Give a Litestar app portside's databases, units of work and readiness route.

    ``databases`` is one :class:`~portside.DatabaseSettings`, a mapping of names to
    settings (the first is the default), or ``None`` to read ``DATABASE_*`` from the
    environment at each start. ``lifespan(app, lifecycle)`` is your own lifespan: it
    runs once the databases answer (e.g. to create tables); the app's other
    lifespans and ``on_startup`` hooks run inside portside's too (Litestar runs
    ``on_shutdown`` hooks after every lifespan has exited, when the engines are
    gone). ``readiness_path=None`` adds no readiness route, a dependency key set to
    ``None`` is not registered, ``commit_redirects=False`` rolls back 3xx responses.
    """

    databases: Databases = None
    _: KW_ONLY
    lifespan: Lifespan | None = None
    readiness_path: str | None = "/health"
    commit_redirects: bool = True
    session_dependency_key: str | None = "db_session"
    sync_session_dependency_key: str | None = "sync_db_session"
    lifecycle_dependency_key: str | None = "lifecycle"

    @asynccontextmanager
    async def _app_lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Run a new :class:`~portside.Lifecycle` for one start of ``app``."""
        async with Lifecycle(self.databases) as lifecycle:
            app.state[LIFECYCLE_STATE_KEY] = lifecycle
            try:
                if self.lifespan is None:
                    yield
                else:
                    async with self.lifespan(app, lifecycle):
                        yield
            finally:
                del app.state[LIFECYCLE_STATE_KEY]

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the lifespan, the middleware, the providers and the readiness route."""
        if any(isinstance(p, PortsidePlugin) and p is not self for p in app_config.plugins):
            raise LifecycleStateError(
                "This Litestar app has more than one PortsidePlugin; give one plugin every "
                "database instead: PortsidePlugin({'default': ..., 'analytics': ...})."
            )
        # First, so the app's own lifespans and on_startup hooks can use the databases.
        app_config.lifespan.insert(0, self._app_lifespan)
        # Outermost, so the commit decision reads the status the client will get. Litestar
        # puts an ExceptionHandlerMiddleware between any middleware and the handler: an
        # exception a handler raises (HTTPException included) becomes its error response
        # there, and that response's http.response.start passes through this middleware,
        # which rolls back on its status >= 400. The handlers registered below make a
        # database that cannot serve a 503 there, as the middleware itself would.
        app_config.middleware.insert(
            0,
            DefineMiddleware(
                UnitOfWorkMiddleware,  # type: ignore[arg-type]  # plain-mapping ASGI types
                lifecycle=_lifecycle_of_scope,
                commit_redirects=self.commit_redirects,
                options=_route_options,
            ),
        )
        for exc_type in DATABASE_ERRORS:
            app_config.exception_handlers.setdefault(exc_type, _database_error)
        providers = {
            self.session_dependency_key: async_session_dependency(),
            self.sync_session_dependency_key: session_dependency(),
            self.lifecycle_dependency_key: Provide(_provide_lifecycle),
        }
        for key, provider in providers.items():
            if key is not None:
                app_config.dependencies.setdefault(key, provider)
        if self.readiness_path is not None:
            app_config.route_handlers.append(
                get(self.readiness_path, include_in_schema=False, cache=False)(_readiness)
            )
        return app_config
