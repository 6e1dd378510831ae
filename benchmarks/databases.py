"""The two databases a run uses and the one engine configuration all contestants share.

Every contestant gets the same pool (size, overflow, timeout, recycle) and, on
SQLite, the same per-connection pragmas portside applies (WAL,
``synchronous=NORMAL``, foreign keys, busy timeout): the contestants differ only in
how a request gets its session, not in how the database is tuned. What portside
does beyond that (``BEGIN``/``BEGIN IMMEDIATE`` on SQLite) is part of what is
measured.

The non-portside contestants check no connection at checkout (``pool_pre_ping``
off: the bare seed app, the reference of every ratio), except those built on
:meth:`BenchDatabase.with_pre_ping` (``*-handwritten-preping``: the seed's
``pool_pre_ping=True``, SQLAlchemy's ping on every checkout). portside keeps its
own defaults, which guarantee what the pre-ping does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, delete, event, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.models import SEED_ROWS, TABLE, Item, item_table, seed_rows
from portside import DatabaseSettings

#: Environment variable naming the PostgreSQL database the benchmark may use.
POSTGRESQL_URL_ENV = "PORTSIDE_BENCH_POSTGRESQL_URL"
DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/test"

Backend = Literal["sqlite", "postgresql"]

_SQLITE_BUSY_TIMEOUT_MS = 5_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


@dataclass(frozen=True)
class PoolConfig:
    """The pool every contestant's engine gets.

    ``max_overflow`` defaults to 0: overflow connections are closed when returned,
    so at high concurrency they would make every contestant pay for reconnecting.
    """

    size: int = 10
    max_overflow: int = 0
    timeout: float = 30.0
    recycle: float = 1800.0


@dataclass
class BenchDatabase:
    """One database of the run: its URLs, the shared engine options, seeding."""

    backend: Backend
    url: str
    pool: PoolConfig = field(default_factory=PoolConfig)
    #: DATABASE_TELEMETRY for the portside contestants (the -otel ones).
    telemetry: bool = False
    #: A streaming replica of this database, for the ``*-portside-replicas`` contestants.
    replica_url: str | None = None
    #: SQLAlchemy's ``pool_pre_ping`` for the non-portside contestants (on PostgreSQL).
    seed_pre_ping: bool = False

    @functools.cached_property
    def settings(self) -> DatabaseSettings:
        """Settings for the portside contestants (async engine only, as they use)."""
        return DatabaseSettings(
            url=self.url,
            engines="async",
            pool_size=self.pool.size,
            max_overflow=self.pool.max_overflow,
            pool_timeout=self.pool.timeout,
            pool_recycle=self.pool.recycle,
            sqlite_busy_timeout=_SQLITE_BUSY_TIMEOUT_MS / 1000,
            telemetry=self.telemetry,
            replica_urls=[self.replica_url] if self.replica_url else [],
        )

    def _replica(self) -> str:
        """This database on the replica server named by ``PORTSIDE_BENCH_REPLICA_URL``."""
        server = os.environ.get(REPLICA_URL_ENV)
        if self.backend != "postgresql" or not server:
            raise RuntimeError(
                f"the *-portside-replicas contestants need --databases postgresql and "
                f"{REPLICA_URL_ENV} set to a streaming replica of the benchmark's server"
            )
        url = make_url(server).set(database=make_url(self.url).database)
        return url.render_as_string(hide_password=False)

    def with_replica(self) -> BenchDatabase:
        """This database with its reads routed to the replica (``*-portside-replicas``)."""
        return dataclasses.replace(self, replica_url=self._replica())

    def on_replica(self) -> BenchDatabase:
        """The replica as the only database, no routing (``*-portside-on-replica``).

        Reads then hit the same server as ``with_replica``'s, so the difference
        between the two is what routing itself costs. Only GET works there.
        """
        return dataclasses.replace(self, url=self._replica(), replica_url=None)

    @property
    def async_url(self) -> str:
        """The asyncio URL portside derives from :attr:`url` (aiosqlite / asyncpg)."""
        url = self.settings.async_url
        assert url is not None  # resolved by validation
        return url

    @property
    def pre_ping(self) -> bool:
        """SQLAlchemy's pre-ping for the non-portside contestants: only where asked, never
        for a file."""
        return self.backend == "postgresql" and self.seed_pre_ping

    def with_pre_ping(self) -> BenchDatabase:
        """This database with the seed's ``pool_pre_ping=True`` (``*-handwritten-preping``)."""
        return dataclasses.replace(self, seed_pre_ping=True)

    def engine_options(self) -> dict[str, Any]:
        """``create_async_engine`` keyword arguments every non-portside contestant uses."""
        return {
            "pool_size": self.pool.size,
            "max_overflow": self.pool.max_overflow,
            "pool_timeout": self.pool.timeout,
            "pool_recycle": self.pool.recycle,
            "pool_pre_ping": self.pre_ping,
        }

    def install_defaults(self, engine: AsyncEngine | Engine) -> None:
        """Give ``engine`` the per-connection settings portside's engines get."""
        if self.backend == "sqlite":
            sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
            event.listen(sync_engine, "connect", _sqlite_pragmas)

    def create_engine(self) -> AsyncEngine:
        """A new async engine configured like every contestant's."""
        engine = create_async_engine(self.async_url, **self.engine_options())
        self.install_defaults(engine)
        return engine

    async def seed(self) -> None:
        """(Re)create the table with its :data:`~benchmarks.models.SEED_ROWS` rows."""
        engine = self.create_engine()
        try:
            async with engine.begin() as connection:
                await connection.run_sync(Item.metadata.drop_all, tables=[item_table()])
                await connection.run_sync(Item.metadata.create_all, tables=[item_table()])
                await connection.execute(insert(Item), seed_rows())
                if self.backend == "postgresql":
                    await connection.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('{TABLE}', 'id'), {SEED_ROWS})")
                    )
            if self.backend == "postgresql":
                async with engine.connect() as connection:
                    autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    await autocommit.execute(text(f"VACUUM ANALYZE {TABLE}"))
        finally:
            await engine.dispose()

    async def trim(self, engine: AsyncEngine) -> None:
        """Delete the rows POST requests added, so every batch sees the same table."""
        async with engine.begin() as connection:
            await connection.execute(delete(Item).where(Item.id > SEED_ROWS))  # type: ignore[arg-type,operator]

    async def drop(self) -> None:
        """Drop the table (end of the run)."""
        engine = self.create_engine()
        try:
            async with engine.begin() as connection:
                await connection.run_sync(Item.metadata.drop_all, tables=[item_table()])
        finally:
            await engine.dispose()


def sqlite_database(directory: Path | None, pool: PoolConfig) -> tuple[BenchDatabase, Path]:
    """A SQLite file database in ``directory`` (a new temporary one if ``None``)."""
    folder = Path(tempfile.mkdtemp(prefix="portside-bench-")) if directory is None else directory
    path = folder / "bench.db"
    return BenchDatabase("sqlite", f"sqlite:///{path}", pool), folder


#: A streaming replica of the PostgreSQL server; enables the ``*-portside-replicas`` contestants.
REPLICA_URL_ENV = "PORTSIDE_BENCH_REPLICA_URL"


def postgresql_database(url: str | None, pool: PoolConfig) -> BenchDatabase:
    """The PostgreSQL database named by ``url`` or ``PORTSIDE_BENCH_POSTGRESQL_URL``."""
    return BenchDatabase(
        "postgresql", url or os.environ.get(POSTGRESQL_URL_ENV, DEFAULT_POSTGRESQL_URL), pool
    )
