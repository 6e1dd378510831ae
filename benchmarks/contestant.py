"""What a contestant is: something that starts, answers prepared calls, and stops.

ASGI contestants are apps driven through :mod:`benchmarks.driver`; the raw
SQLAlchemy contestant runs the same three database operations with no HTTP at all.
Each contestant starts afresh in every round (lifespan in, lifespan out, with
its framework's group), so no pool outlives its group's turn and PostgreSQL never
holds more than one group's connections at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from benchmarks.databases import BenchDatabase
from benchmarks.driver import ASGIApp, AsgiClient, Call, run_lifespan

Framework = Literal["fastapi", "litestar", "starlette", "sqlalchemy"]
Kind = Literal[
    "portside",
    "portside-replicas",
    "portside-on-replica",
    "handwritten",
    "inline",
    "floor",
    "advanced-alchemy",
    "raw",
]


class Running(Protocol):
    """A started contestant."""

    async def call(self, call: Call) -> tuple[int, Any]:
        """Answer ``call``: the status and the body (bytes) or the payload (raw)."""
        ...

    def checked_out(self) -> int | None:
        """Connections its pool has checked out now (``None``: no database)."""
        ...


def checked_out(engine: AsyncEngine | None) -> int | None:
    """The checked-out count of ``engine``'s queue pool."""
    if engine is None:
        return None
    pool = engine.sync_engine.pool
    return pool.checkedout() if isinstance(pool, QueuePool) else None


@dataclass(frozen=True)
class AppBundle:
    """A built app and how to find its engine once its lifespan ran."""

    app: ASGIApp
    engine: Callable[[dict[str, Any]], AsyncEngine | None] = lambda _state: None


class _RunningApp:
    def __init__(self, client: AsgiClient, engine: AsyncEngine | None) -> None:
        self.call = client.call
        self._engine = engine

    def checked_out(self) -> int | None:
        return checked_out(self._engine)


class Starter(Protocol):
    """How a contestant is prepared (built, imported) and started."""

    def prepare(self, database: BenchDatabase) -> None:
        """Do the one-time work (imports, building the app) before any timing."""
        ...

    def start(self, database: BenchDatabase) -> AbstractAsyncContextManager[Running]:
        """Start against ``database``; stop on exit."""
        ...


@dataclass(eq=False)
class Contestant:
    """One benchmarked way of serving the three routes."""

    name: str
    framework: Framework
    kind: Kind
    starter: Starter

    @property
    def uses_database(self) -> bool:
        """Whether it touches the database (floors do not)."""
        return self.kind != "floor"

    def prepare(self, database: BenchDatabase) -> None:
        """Import and build what it needs for ``database``, before any timing."""
        self.starter.prepare(database)

    def start(self, database: BenchDatabase) -> AbstractAsyncContextManager[Running]:
        """Start it against ``database``; stops on exit."""
        return self.starter.start(database)


@dataclass(eq=False)
class AppFactory:
    """Builds a contestant's app once per database and runs its lifespan per round."""

    build: Callable[[BenchDatabase], AppBundle]
    _built: dict[str, AppBundle] = field(default_factory=dict)

    def prepare(self, database: BenchDatabase) -> None:
        """Build the app for ``database`` (once)."""
        if database.url not in self._built:
            self._built[database.url] = self.build(database)

    @asynccontextmanager
    async def start(self, database: BenchDatabase) -> AsyncIterator[Running]:
        """Run the app's lifespan around a client for it."""
        self.prepare(database)
        bundle = self._built[database.url]
        async with run_lifespan(bundle.app) as state:
            yield _RunningApp(AsgiClient(bundle.app, state), bundle.engine(state))


def asgi_contestant(
    name: str, framework: Framework, kind: Kind, build: Callable[[BenchDatabase], AppBundle]
) -> Contestant:
    """A contestant served by the ASGI app ``build`` makes."""
    return Contestant(name, framework, kind, AppFactory(build))
