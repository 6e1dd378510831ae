"""The portside pytest plugin: isolated tests of portside apps against a real database.

Installed with ``portside-testing`` (entry point ``pytest11: portside``), it gives
every test that asks for them:

``portside_database_url`` (session)
    ``--portside-database-url``, else ``PORTSIDE_TEST_DATABASE_URL``, else a
    SQLite file in a temporary directory, one for the whole session. Under
    pytest-xdist, each worker's own clone of it (``<name>_gw0``...); with
    ``portside_alembic_config``, a clone of the migrated template.
``portside_alembic_config`` (session)
    ``--portside-alembic-ini``: the ``alembic.ini`` whose migrations build the
    schema (``None``: tables come from ``portside_metadata``).
``portside_worker_database`` (session)
    ``portside_worker_database(url)``: the URL to use for another database of
    yours (clones it per xdist worker, dropped at the end; ``url`` itself otherwise).
``portside_settings``
    :class:`~portside.DatabaseSettings` for that URL.
``portside_metadata``
    The tables to create: ``SQLModel.metadata`` unless you override this fixture.
``portside_tables``
    Makes sure those tables exist (created once per session, dropped at its end).
``portside_transaction``
    The test's :class:`~portside_testing.OuterTransaction`: every
    :class:`~portside.Lifecycle` started during the test (an app's lifespan
    included) joins it, so everything committed is rolled back afterwards.
``portside_client``
    ``async with portside_client(app) as client:`` runs the app's lifespan inside
    the test's transaction; ``client.get/post/put/patch/delete/request``.
``portside_sync_client`` / ``portside_async_client``
    ``with portside_sync_client(app) as client:`` (plain ``def`` tests) or
    ``async with portside_async_client(app) as client:``: an ``httpx.Client`` /
    ``httpx.AsyncClient`` on the app run inside the test's transaction;
    ``client.session()`` is a session of the test's own in that transaction.
``portside_database_env``
    ``DATABASE_URL``/``DATABASE_ASYNC_URL`` point at the test database for the test
    (the client fixture uses it, so apps reading ``DATABASE_*`` find the test database).
``portside_on_commit``
    The after-commit callbacks units registered during the test, captured
    instead of run (:func:`~portside_testing.capture_on_commit`).
``portside_lifecycle``, ``portside_async_session``, ``portside_session``
    A started lifecycle and sessions on it, for tests of code without an app.

All but ``portside_database_url`` are function-scoped; override any of them, at
any scope, in your ``conftest.py`` (the tables are tracked per database URL, not
per fixture scope, so a parametrized database works).

After each passing test, every lifecycle of its transaction that is still running
is checked for connections and units of work that were never given back (before
anything shuts down), as the client checks its app when its block ends; a leak
fails the test with :class:`~portside_testing.leaks.ConnectionLeakError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlmodel import SQLModel

from portside import AsyncSession, DatabaseSettings, Lifecycle, Session
from portside.urls import is_sqlite_memory
from portside_testing.client import ClientFactory, open_client
from portside_testing.http_client import (
    AsyncClientFactory,
    SyncClientFactory,
    open_async_client,
    open_sync_client,
)
from portside_testing.leaks import check_for_leaks
from portside_testing.migrations import migrate_template
from portside_testing.on_commit import CapturedCallbacks, capture_on_commit
from portside_testing.outer_transaction import OuterTransaction
from portside_testing.tables import TableRegistry
from portside_testing.worker_databases import WorkerDatabases, clone_url

__all__ = [
    "ALEMBIC_INI_OPTION",
    "DATABASE_URL_ENV",
    "DATABASE_URL_OPTION",
    "portside_alembic_config",
    "portside_async_client",
    "portside_async_session",
    "portside_client",
    "portside_database_env",
    "portside_database_url",
    "portside_lifecycle",
    "portside_metadata",
    "portside_session",
    "portside_settings",
    "portside_sync_client",
    "portside_tables",
    "portside_transaction",
    "portside_worker_database",
    "settings_for",
]

#: The command-line option naming the test database.
DATABASE_URL_OPTION = "--portside-database-url"
#: The environment variable naming the test database (the option wins).
DATABASE_URL_ENV = "PORTSIDE_TEST_DATABASE_URL"
#: The command-line option naming the ``alembic.ini`` that builds the schema.
ALEMBIC_INI_OPTION = "--portside-alembic-ini"

_TRANSACTION = pytest.StashKey[OuterTransaction]()

_MEMORY_REFUSED = (
    "portside's test fixtures need a database that outlives one Lifecycle: an "
    "in-memory SQLite database ({url}) vanishes when its lifecycle stops, so the "
    "tables created for the session would be gone before the test starts. Use a "
    "file (sqlite:///path/test.db) or leave {option} and {env} unset for a "
    "temporary file."
)
_CLIENT_WITH_SESSION_FIXTURES = (
    "portside_client cannot be combined with portside_lifecycle, portside_session or "
    "portside_async_session: those use their own engine, so their connection is "
    "not the app's and neither would see what the other commits (on SQLite, their "
    "writes would lock each other out). Work with the app's own lifecycle "
    "instead, inside the client block:\n\n"
    "    async with portside_client(app) as client:\n"
    "        async with client.lifecycle.async_session() as session:\n"
    "            session.add(...)  # committed when the block ends; the app sees it\n"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--portside-database-url``."""
    group = parser.getgroup("portside", "portside test database")
    group.addoption(
        DATABASE_URL_OPTION,
        dest="portside_database_url",
        default=None,
        metavar="URL",
        help=(
            f"SQLAlchemy URL of the database portside's fixtures use (default: "
            f"${DATABASE_URL_ENV}, else a temporary SQLite file). Every test rolls back; "
            "tables missing at the start are created, and dropped at the end."
        ),
    )
    group.addoption(
        ALEMBIC_INI_OPTION,
        dest="portside_alembic_ini",
        default=None,
        metavar="PATH",
        help=(
            "alembic.ini whose migrations build the test schema: a template database "
            "(<name>_template) is migrated once and cloned for the session or each xdist "
            "worker, and rebuilt only when the migration scripts change."
        ),
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After a passing test body, fail the test if it leaked database resources.

    Runs before fixture teardown, while the test's lifecycles still run, so the
    pools still show what was never given back.
    """
    __tracebackhide__ = True
    yield  # raises if the test failed: a leak is then rarely the news
    outer = item.stash.get(_TRANSACTION, None)
    if outer is not None:
        check_for_leaks(list(outer.lifecycles), when="at the end of the test")


# -- the database ----------------------------------------------------------------


@pytest.fixture(scope="session")
def portside_alembic_config(request: pytest.FixtureRequest) -> Path | None:
    """The ``alembic.ini`` whose migrations build the schema, or ``None`` (see the module).

    ``--portside-alembic-ini``; override this fixture to name it in code.
    """
    path = request.config.getoption("portside_alembic_ini")
    return Path(path).resolve() if path else None


def _worker_id(config: pytest.Config) -> str | None:
    """This xdist worker's id (``gw0``...), or ``None`` in a run without workers.

    Read from the worker's config, not ``PYTEST_XDIST_WORKER``: a pytest run
    started inside a worker (pytester) inherits the environment variable.
    """
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    return workerinput.get("workerid")


@pytest.fixture(scope="session")
def _portside_worker_databases(request: pytest.FixtureRequest) -> Iterator[WorkerDatabases]:
    clones = WorkerDatabases(_worker_id(request.config) or "main")
    yield clones
    errors = clones.drop_all()
    if errors:
        warnings.warn("dropping the test databases failed: " + "; ".join(errors), stacklevel=1)


@pytest.fixture(scope="session")
def portside_worker_database(
    request: pytest.FixtureRequest, _portside_worker_databases: WorkerDatabases
) -> Callable[[str], str]:
    """``portside_worker_database(url)``: this xdist worker's clone of ``url`` (or ``url``).

    For each database of a multi-database app: the clone is made from ``url``'s
    database as a template the first time and dropped at the end of the session.
    Outside xdist, ``url`` itself.
    """

    def clone(url: str) -> str:
        if _worker_id(request.config) is None:
            return url
        return _same_driver(url, _portside_worker_databases.clone(_sync_url(url)))

    return clone


@pytest.fixture(scope="session")
def portside_database_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    portside_alembic_config: Path | None,
    _portside_worker_databases: WorkerDatabases,
) -> str:
    """The test database's URL, sync or async driver (see the module docstring).

    Override this fixture (any scope) to choose the database in code.
    """
    url = request.config.getoption("portside_database_url") or os.environ.get(DATABASE_URL_ENV)
    if not url:
        # Under xdist, the template lives where every worker finds it.
        root = tmp_path_factory.getbasetemp()
        worker = _worker_id(request.config)
        root = root.parent if worker is not None else root
        (root / "portside").mkdir(exist_ok=True)
        url = f"sqlite:///{root / 'portside' / 'test.db'}"
    url = str(url)
    if is_sqlite_memory(_sync_url(url)):
        return url  # refused by portside_settings, with the reason
    if portside_alembic_config is not None:
        ini = portside_alembic_config
        base = _sync_url(url)
        clone = _portside_worker_databases.clone(
            clone_url(base, "template"),
            prepare=lambda target: migrate_template(ini, target),
            named_after=base,
        )
        return _same_driver(url, clone)
    if _worker_id(request.config) is None:
        return url
    return _same_driver(url, _portside_worker_databases.clone(_sync_url(url)))


def _sync_url(url: str) -> URL:
    return settings_for(url).sync_url_object


def _same_driver(original: str, clone: URL) -> str:
    """``clone``'s database, with ``original``'s driver (and password)."""
    return make_url(original).set(database=clone.database).render_as_string(hide_password=False)


def settings_for(url: str) -> DatabaseSettings:
    """:class:`~portside.DatabaseSettings` for ``url``, given with a sync or an async driver.

    Both URLs are passed explicitly, so a ``DATABASE_URL``/``DATABASE_ASYNC_URL``
    in the environment (or ``.env``) can never send tests to another database.
    Other ``DATABASE_*`` settings (pool sizes, timeouts) still apply.
    """
    try:
        is_async = bool(make_url(url).get_dialect().is_async)
    except (ArgumentError, NoSuchModuleError):
        is_async = False  # let DatabaseSettings explain what is wrong with the URL
    if is_async:
        return DatabaseSettings(url=None, async_url=url)
    return DatabaseSettings(url=url, async_url=None)


@pytest.fixture
def portside_settings(portside_database_url: str) -> DatabaseSettings:
    """Settings for the test database; build your app from them (or see ``portside_client``)."""
    settings = settings_for(portside_database_url)
    if is_sqlite_memory(settings.sync_url_object):
        pytest.fail(
            _MEMORY_REFUSED.format(
                url=settings.masked_url, option=DATABASE_URL_OPTION, env=DATABASE_URL_ENV
            ),
            pytrace=False,
        )
    return settings


@pytest.fixture
def portside_metadata() -> MetaData:
    """The tables the tests need: ``SQLModel.metadata`` (override it to use your own).

    Only models imported by the time a test starts are in it; import your models
    in your tests or conftest.
    """
    return SQLModel.metadata


@pytest.fixture(scope="session")
def _portside_table_registry(
    _portside_worker_databases: WorkerDatabases,  # dropped after the tables, not before
) -> Iterator[TableRegistry]:
    registry = TableRegistry()
    yield registry
    registry.drop_created()


@pytest.fixture
def portside_tables(
    _portside_table_registry: TableRegistry,
    portside_settings: DatabaseSettings,
    portside_metadata: MetaData,
) -> None:
    """The tables of ``portside_metadata`` exist in the test database.

    Missing ones are created the first time (committed, outside every test's
    transaction) and dropped at the end of the session; existing ones are left as
    they are. Tests never change the schema for the others: they roll back.
    """
    _portside_table_registry.ensure(portside_settings, portside_metadata)


@pytest.fixture
def portside_database_env(
    portside_settings: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> DatabaseSettings:
    """Point ``DATABASE_URL`` and ``DATABASE_ASYNC_URL`` at the test database for this test.

    Apps that read their settings from the environment when they are built (in
    the test) or when they start (the integrations' default) then use the test
    database. Returns the settings.
    """
    monkeypatch.setenv("DATABASE_URL", str(portside_settings.url))
    monkeypatch.setenv("DATABASE_ASYNC_URL", str(portside_settings.async_url))
    return portside_settings


# -- the test's transaction --------------------------------------------------------


@pytest.fixture
async def portside_transaction(
    request: pytest.FixtureRequest, portside_tables: None, anyio_backend: Any
) -> AsyncIterator[OuterTransaction]:
    """The outer transaction every lifecycle started in this test joins; rolled back.

    Each lifecycle rolls its part back when it shuts down; lifecycles still
    running when the test's fixtures are torn down are shut down here.
    """
    with OuterTransaction() as outer:
        request.node.stash[_TRANSACTION] = outer
        try:
            yield outer
        finally:
            for lifecycle in reversed(outer.lifecycles):
                await lifecycle.shutdown()  # does nothing if already stopped


@pytest.fixture
def portside_client(
    request: pytest.FixtureRequest,
    portside_transaction: OuterTransaction,
    portside_database_env: DatabaseSettings,
) -> ClientFactory:
    """``async with portside_client(app) as client:``: the app, run inside the test's transaction.

    The app's lifespan starts (and its portside Lifecycle joins the transaction)
    when the block is entered and stops when it ends; everything the app
    committed is rolled back then. Works for FastAPI, Litestar and Starlette apps
    built with the portside integrations; no dependency overrides. Before the app
    stops, its pools are checked for leaked connections.
    """
    own_sessions = {"portside_lifecycle", "portside_session", "portside_async_session"}
    if own_sessions.intersection(request.fixturenames):
        pytest.fail(_CLIENT_WITH_SESSION_FIXTURES, pytrace=False)
    return open_client


@pytest.fixture
def portside_async_client(
    request: pytest.FixtureRequest,
    portside_transaction: OuterTransaction,
    portside_database_env: DatabaseSettings,
) -> AsyncClientFactory:
    """``async with portside_async_client(app) as client:``: an ``httpx.AsyncClient`` on the app.

    The app runs inside the test's transaction (see ``portside_client``);
    ``await client.session()`` is a session of the test's own in it, which never
    blocks the app and never shows stale rows (see :mod:`portside_testing.http_client`).
    """
    return open_async_client


@pytest.fixture
def portside_sync_client(
    request: pytest.FixtureRequest,
    portside_tables: None,
    portside_database_env: DatabaseSettings,
) -> Iterator[SyncClientFactory]:
    """``with portside_sync_client(app) as client:``: an ``httpx.Client`` on the app.

    For plain ``def`` tests, like Starlette's ``TestClient``: the app runs on an
    event loop in a background thread, inside the test's transaction, rolled back
    at the end. ``client.session()`` is a sync session of the test's own in it.
    """
    with OuterTransaction() as outer:
        request.node.stash[_TRANSACTION] = outer
        yield open_sync_client


@pytest.fixture
def portside_on_commit() -> Iterator[CapturedCallbacks]:
    """The after-commit callbacks registered during the test, captured instead of run.

    Assert on them, and ``await portside_on_commit.run()`` to run them (see
    :func:`portside_testing.capture_on_commit`).
    """
    with capture_on_commit() as callbacks:
        yield callbacks


# -- a lifecycle and sessions of the test's own --------------------------------------


@pytest.fixture
async def portside_lifecycle(
    portside_transaction: OuterTransaction, portside_settings: DatabaseSettings
) -> AsyncIterator[Lifecycle]:
    """A started :class:`~portside.Lifecycle` on the test database, inside the transaction.

    For testing code that takes a lifecycle (or opens units of work) without an
    app; units of work on it commit into the test's transaction.
    """
    async with Lifecycle(portside_settings) as lifecycle:
        yield lifecycle


@pytest.fixture
async def portside_async_session(
    portside_lifecycle: Lifecycle, portside_transaction: OuterTransaction
) -> AsyncIterator[AsyncSession]:
    """An async session on the test's transaction, for the whole test.

    It is bound directly to the transaction's connection (no unit of work), so
    units of work the code under test opens on ``portside_lifecycle`` run while
    it exists and see what it commits, and it sees what they commit. Its
    ``commit()`` releases a SAVEPOINT; everything is rolled back after the test.
    """
    port = portside_lifecycle.database().async_port()
    connection = await portside_transaction.async_connection(port.engine)
    session = port.new_session(writes=True, bind=connection)
    try:
        yield session
    finally:
        session.mark_ended()
        await session.close()


@pytest.fixture
async def portside_session(
    portside_lifecycle: Lifecycle, portside_transaction: OuterTransaction
) -> AsyncIterator[Session]:
    """A sync session on the test's transaction, for the whole test.

    Like ``portside_async_session``, through the sync engine. Its I/O blocks: use
    it directly in a plain ``def`` test, and only through a worker thread
    (``await anyio.to_thread.run_sync(...)``) in an async one.
    """
    port = portside_lifecycle.database().sync_port()
    connection = await portside_transaction.sync_connection_async(port.engine)
    session = port.new_session(writes=True, bind=connection)
    try:
        yield session
    finally:
        session.mark_ended()
        await anyio.to_thread.run_sync(session.close)
