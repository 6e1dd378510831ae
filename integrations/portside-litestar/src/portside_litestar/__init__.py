"""Litestar integration for portside: one plugin, two DI providers, a readiness route.

:class:`PortsidePlugin` builds the engines when the app starts (a new
:class:`portside.Lifecycle` each time, kept on ``app.state``), disposes them when it
stops, and gives every request one unit of work that commits *before* the response
starts (and rolls back on errors and statuses >= 400)::

    from litestar import Litestar, post
    from sqlmodel import Field, SQLModel

    from portside import DatabaseSettings
    from portside_litestar import AsyncSessionDep, PortsidePlugin

    class Visit(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)

    @post("/visits")
    async def add_visit(db_session: AsyncSessionDep) -> dict[str, int | None]:
        visit = Visit()
        db_session.add(visit)
        await db_session.flush()
        return {"id": visit.id}  # committed before the 201 is sent

    app = Litestar(
        [add_visit],
        plugins=[PortsidePlugin(DatabaseSettings(url="sqlite:///app.db"))],
    )

Sync handlers take ``sync_db_session: SessionDep`` and are declared with
``sync_to_thread=True``. Another database's session comes from :func:`provide_session`:
``dependencies={"analytics_session": provide_session("analytics")}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass
from typing import Any, cast

from litestar import Litestar, Request, Response, get
from litestar.config.app import AppConfig
from litestar.di import NamedDependency, Provide
from litestar.exceptions.responses import create_debug_response, create_exception_response
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPlugin
from litestar.types import Scope
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portside import (
    AsyncSession,
    DatabaseSettings,
    Lifecycle,
    LifecycleStateError,
    Session,
    ShuttingDownError,
    is_database_unavailable,
    readiness,
)
from portside.asgi import (
    LIFECYCLE_STATE_KEY,
    UnitOfWorkMiddleware,
    error_response,
    unit_of_work_from_scope,
)

__all__ = ["AsyncSessionDep", "PortsidePlugin", "SessionDep", "get_lifecycle", "provide_session"]

Databases = DatabaseSettings | Mapping[str, DatabaseSettings] | None

# Litestar deprecates dependencies inferred from a bare type: these mark them.
#: Annotation of a handler parameter receiving an async session (``db_session: AsyncSessionDep``).
AsyncSessionDep = NamedDependency[AsyncSession]
#: Annotation of a sync handler's parameter receiving a sync session.
SessionDep = NamedDependency[Session]


def get_lifecycle(app: Litestar) -> Lifecycle:
    """The running :class:`~portside.Lifecycle` of ``app``, e.g. for a background task.

    Work that runs after the response (background tasks, streaming bodies) opens its
    own unit of work: ``async with get_lifecycle(app).async_session() as session:``.
    """
    lifecycle: Lifecycle | None = app.state.get(LIFECYCLE_STATE_KEY)
    if lifecycle is None:
        raise LifecycleStateError(
            "No portside lifecycle on this Litestar app's state: add PortsidePlugin(...) to "
            "the app's plugins and run its lifespan (in tests: `with TestClient(app):`)."
        )
    return lifecycle


def _lifecycle_of_scope(scope: Mapping[str, Any]) -> Lifecycle:
    return get_lifecycle(scope["litestar_app"])


def provide_session(database: str | None = None, *, sync: bool = False) -> Provide:
    """A DI provider of the request's session of ``database`` (default: the first).

    The provider is async and does no I/O (the session connects on first use), so
    Litestar runs it on the event loop; a ``sync=True`` session must only be used by
    handlers declared with ``sync_to_thread=True``.
    """

    async def provide(scope: Scope) -> AsyncSession | Session:
        # The core types ASGI scopes as plain mappings, Litestar as TypedDicts.
        unit = unit_of_work_from_scope(cast("MutableMapping[str, Any]", scope))
        return await (unit.session(database) if sync else unit.async_session(database))

    return Provide(provide)


def _database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Answer "database unavailable" with 503; anything else as Litestar would."""
    if is_database_unavailable(exc):
        status, body = error_response(exc)
        return Response(body, status_code=status)
    if (fallback := request.app.exception_handlers.get(500)) is not None:
        return fallback(request, exc)
    if request.app.debug:
        return create_debug_response(request, exc)
    return create_exception_response(request, exc)


async def _health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    status, body = readiness(await get_lifecycle(request.app).ping())
    return Response(body, status_code=status)


@dataclass(eq=False)  # plugins are hashed by identity
class PortsidePlugin(InitPlugin):
    """Give a Litestar app portside's engines, units of work and readiness route.

    ``databases`` is one :class:`~portside.DatabaseSettings`, a mapping of names to
    settings (the first is the default), or ``None`` to read ``DATABASE_*`` from the
    environment at each startup. A dependency key or ``health_path`` set to ``None``
    is not registered; ``commit_redirects=False`` rolls back 3xx responses. The app's
    own lifespans and ``on_startup`` hooks may use the databases; Litestar runs
    ``on_shutdown`` hooks after every lifespan has exited, when the engines are gone.
    """

    databases: Databases = None
    _: KW_ONLY
    session_dependency_key: str | None = "db_session"
    sync_session_dependency_key: str | None = "sync_db_session"
    health_path: str | None = "/health"
    commit_redirects: bool = True

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Run a new :class:`~portside.Lifecycle` for one start of ``app``."""
        async with Lifecycle(self.databases) as lifecycle:
            app.state[LIFECYCLE_STATE_KEY] = lifecycle
            try:
                yield
            finally:
                del app.state[LIFECYCLE_STATE_KEY]

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the lifespan, the middleware, the providers and the readiness route."""
        # First, so the app's own lifespans and on_startup hooks can use the databases.
        app_config.lifespan.insert(0, self.lifespan)
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
            ),
        )
        for exc_type in (DBAPIError, PoolTimeoutError, ShuttingDownError):
            app_config.exception_handlers.setdefault(exc_type, _database_error)
        if self.session_dependency_key:
            app_config.dependencies.setdefault(self.session_dependency_key, provide_session())
        if self.sync_session_dependency_key:
            app_config.dependencies.setdefault(
                self.sync_session_dependency_key, provide_session(sync=True)
            )
        if self.health_path is not None:
            app_config.route_handlers.append(
                get(self.health_path, include_in_schema=False, cache=False)(_health)
            )
        return app_config
