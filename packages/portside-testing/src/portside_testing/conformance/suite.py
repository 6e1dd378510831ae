"""The conformance scenarios, written once for every framework integration.

Subclass :class:`ConformanceSuite` and set its ``harness``; pytest collects the
inherited scenarios and runs each on three databases (``sqlite-file``,
``sqlite-memory``, ``postgresql``) with two session modes (``async``, ``sync``)::

    from portside_testing.conformance import ConformanceSuite

    class TestMyFramework(ConformanceSuite):
        harness = MyHarness()

PostgreSQL comes from ``PORTSIDE_TEST_POSTGRESQL_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When no server answers, its
scenarios are skipped with the reason, except under ``CI=true``, where they fail.
Some scenarios create and drop sibling databases (``<name>_analytics``,
``<name>_second``), so the role needs ``CREATEDB``, and every scenario recreates
the conformance tables: give the suite a database of its own. Each test's apps
connect with a unique ``application_name``, which is how ``pg_stat_activity``
tells their connections apart.

Each scenario starts the harness's app through its lifespan with
:class:`~portside_testing.asgi.AppRunner`, recreates the tables of
:mod:`~portside_testing.conformance.models` through the running lifecycle's own
engines, drives requests through ASGI, and checks the outcome the way a user
would: through a second request, or directly on another pooled connection.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import socket
import threading
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar, cast

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import AsyncSession as _SAAsyncSession
from sqlalchemy.orm import Session as _SASession
from sqlalchemy.pool import NullPool
from sqlmodel import col

from portside import DatabaseSettings, Lifecycle, StartupError, UnitOfWork
from portside_testing.asgi import AppRunner, Message, Response, ResponseStartHook
from portside_testing.conformance.harness import SLOW_QUERY_DEADLINE, ASGIApp, Harness, Mode
from portside_testing.conformance.models import Child, ConformanceModel, Item, metadata
from portside_testing.conformance.models import Counter as CounterRow
from portside_testing.on_commit import capture_on_commit

__all__ = ["DATABASES", "MODES", "Backend", "ConformanceSuite", "RunningApp", "Stage"]

#: Environment variable naming the PostgreSQL database the suite may use.
POSTGRESQL_URL_ENV = "PORTSIDE_TEST_POSTGRESQL_URL"
DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/test"
DATABASES = ("sqlite-file", "sqlite-memory", "postgresql")
MODES: tuple[Mode, ...] = ("async", "sync")
#: Sibling databases the PostgreSQL scenarios create next to the configured one.
SIBLINGS = ("analytics", "second")

T = TypeVar("T")


# -- where the databases live --------------------------------------------------------


def _postgresql_unavailable(message: str) -> NoReturn:
    """Skip the PostgreSQL scenarios with ``message``; under ``CI=true``, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI=true requires PostgreSQL")
    pytest.skip(message)


def postgresql_url() -> str:
    """The PostgreSQL URL to test against; skips (or fails under CI) if unreachable."""
    url = os.environ.get(POSTGRESQL_URL_ENV, DEFAULT_POSTGRESQL_URL)
    parsed = make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5432
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError:
        _postgresql_unavailable(
            f"no PostgreSQL server at {host}:{port}; set {POSTGRESQL_URL_ENV} to run these"
        )
    return url


def _closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgreSQLAdmin:
    """Out-of-band access to the server: sibling databases and ``pg_stat_activity``."""

    def __init__(self, url: str) -> None:
        self.url = make_url(DatabaseSettings(url=url).url or url)
        self.database = self.url.database or "postgres"

    def sibling(self, name: str) -> str:
        """The database name used for the extra database ``name``."""
        return f"{self.database}_{name}"

    def _run(self, *statements: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                rows: list[tuple[Any, ...]] = []
                for statement in statements:
                    result = connection.execute(text(statement), params)
                    if result.returns_rows:
                        rows = [tuple(row) for row in result]
                return rows
        finally:
            engine.dispose()

    async def recreate(self, name: str) -> None:
        """Drop (terminating its connections) and create the sibling database ``name``."""
        quoted = '"' + self.sibling(name).replace('"', '""') + '"'
        try:
            await anyio.to_thread.run_sync(
                self._run,
                f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)",
                f"CREATE DATABASE {quoted}",
            )
        except Exception as exc:
            _postgresql_unavailable(f"cannot create database {quoted} (needs CREATEDB): {exc}")

    async def drop(self, name: str) -> None:
        """Drop the sibling database ``name`` now, terminating every connection to it."""
        quoted = '"' + self.sibling(name).replace('"', '""') + '"'
        await anyio.to_thread.run_sync(self._run, f"DROP DATABASE {quoted} WITH (FORCE)")

    async def backends(self, application_name: str) -> dict[int, str]:
        """Connections opened with ``application_name``: pid -> state."""
        query = functools.partial(
            self._run,
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity "
            "WHERE application_name = :name AND pid <> pg_backend_pid()",
            name=application_name,
        )
        rows = await anyio.to_thread.run_sync(query)
        return {int(pid): str(state) for pid, state in rows}


@dataclass
class Backend:
    """One kind of database for one test: URLs, settings and out-of-band access."""

    kind: str
    directory: Path
    postgresql: PostgreSQLAdmin | None = None
    #: The ``application_name`` of this test's PostgreSQL connections.
    application_name: str = field(
        default_factory=lambda: f"portside-conformance-{uuid.uuid4().hex[:12]}"
    )

    def url(self, name: str = "default") -> str:
        """The URL of database ``name`` (each name is a separate, initially empty database)."""
        if self.kind == "sqlite-file":
            return f"sqlite:///{self.directory / f'{name}.db'}"
        if self.kind == "sqlite-memory":
            return "sqlite://"  # every lifecycle gets its own in-memory database
        assert self.postgresql is not None
        url = self.postgresql.url.update_query_dict({"application_name": self.application_name})
        if name != "default":
            url = url.set(database=self.postgresql.sibling(name))
        return url.render_as_string(hide_password=False)

    def settings(self, name: str = "default", **overrides: Any) -> DatabaseSettings:
        """Settings for database ``name``; keyword arguments override fields."""
        # Both engines: the scenarios run in either mode and check through either.
        values: dict[str, Any] = {"url": self.url(name), "engines": "both", "startup_timeout": 10.0}
        return DatabaseSettings(**(values | overrides))

    def unreachable_settings(self, **overrides: Any) -> DatabaseSettings:
        """Settings for a database that cannot be reached."""
        if self.kind == "sqlite-file":
            url = f"sqlite:///{self.directory / 'missing-directory' / 'app.db'}"
        else:
            url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/unreachable"
        return DatabaseSettings(**({"url": url} | overrides))

    async def prepare(self, name: str) -> None:
        """Make the extra database ``name`` exist and be empty."""
        if self.postgresql is not None:
            await self.postgresql.recreate(name)
        # SQLite: a new file name or a new in-memory database is already empty.


# -- a running app, as a scenario sees it ----------------------------------------------


@dataclass
class RunningApp:
    """A started app plus what the scenarios observe about its engines."""

    runner: AppRunner
    lifecycle: Lifecycle
    mode: Mode
    #: The sync core of every engine of every database (async engines included).
    engines: list[Engine]
    #: Connections the app (or the suite's own checks) checked out, since startup.
    checkouts: int = 0
    #: Threads that ran SQL on a *sync* engine.
    sql_threads: set[int] = field(default_factory=set)
    postgresql: PostgreSQLAdmin | None = None
    application_name: str = ""

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        on_response_start: ResponseStartHook | None = None,
    ) -> Response:
        """Send one request through ASGI (see :meth:`AppRunner.request`)."""
        return await self.runner.request(
            method, path, json=json, on_response_start=on_response_start
        )

    async def run(self, work: Callable[[Connection], T], database: str | None = None) -> T:
        """Run ``work`` in a committed transaction on another pooled connection.

        Uses the engine kind of the scenario's mode; a sync engine only from a
        worker thread, never on the event loop.
        """
        db = self.lifecycle.database(database)
        if "sync" in db.kinds and (self.mode == "sync" or "async" not in db.kinds):
            engine = db.engine

            def in_thread() -> T:
                with engine.begin() as connection:
                    return work(connection)

            return await anyio.to_thread.run_sync(in_thread)
        async with db.async_engine.begin() as connection:
            return await connection.run_sync(work)

    async def count(
        self,
        model: type[ConformanceModel] = Item,
        *,
        name: str | None = None,
        database: str | None = None,
    ) -> int:
        """Committed rows of ``model`` (named ``name``, if given), read on another connection."""
        statement = select(func.count()).select_from(model)
        if name is not None:
            statement = statement.where(col(Item.name) == name)
        return await self.run(lambda c: int(c.execute(statement).scalar_one()), database)

    def checked_out(self) -> int:
        """Connections currently checked out of every pool of the app."""
        total = 0
        for engine in self.engines:
            counter = getattr(engine.pool, "checkedout", None)
            assert counter is not None, f"cannot count the checkouts of {engine.pool!r}"
            total += int(counter())
        return total

    async def backends(self) -> dict[int, str]:
        """This test's PostgreSQL connections (pid -> state); ``{}`` elsewhere."""
        if self.postgresql is None:
            return {}
        return await self.postgresql.backends(self.application_name)

    async def assert_no_transaction_left_open(self) -> None:
        """Nothing checked out, no unit in flight, no PostgreSQL backend idle in transaction."""
        assert self.checked_out() == 0, "connections are still checked out of the pool"
        assert self.lifecycle.in_flight == 0, "units of work are still in flight"
        idle = {p: s for p, s in (await self.backends()).items() if "transaction" in s}
        assert not idle, f"PostgreSQL backends left in a transaction: {idle}"

    def _watch(self) -> None:
        def on_checkout(*_: Any) -> None:
            self.checkouts += 1

        def on_sync_execute(*_: Any) -> None:
            self.sql_threads.add(threading.get_ident())

        for name in self.lifecycle.names:
            db = self.lifecycle.database(name)
            if "sync" in db.kinds:
                self.engines.append(db.engine)
                event.listen(db.engine, "before_cursor_execute", on_sync_execute)
            if "async" in db.kinds:
                self.engines.append(db.async_engine.sync_engine)
        for engine in self.engines:
            event.listen(engine, "checkout", on_checkout)


def _recreate_tables(connection: Connection) -> None:
    metadata.drop_all(connection)
    metadata.create_all(connection)


@dataclass
class Stage:
    """What one scenario works with: the harness, the database kind and the mode."""

    harness: Harness
    backend: Backend
    mode: Mode

    def build(
        self, databases: DatabaseSettings | Mapping[str, DatabaseSettings] | None = None
    ) -> ASGIApp:
        """A new app from the harness (default: one database with default settings)."""
        return self.harness.build_app(databases or self.backend.settings(), self.mode)

    @asynccontextmanager
    async def running(self, app: ASGIApp | None = None) -> AsyncIterator[RunningApp]:
        """Start ``app`` (default: :meth:`build`), recreate its tables, stop it on exit."""
        app = self.build() if app is None else app
        async with AppRunner(app) as runner:
            lifecycle = self.harness.lifecycle(app)
            running = RunningApp(
                runner,
                lifecycle,
                self.mode,
                [],
                postgresql=self.backend.postgresql,
                application_name=self.backend.application_name,
            )
            for name in lifecycle.names:
                await running.run(_recreate_tables, name)
            running._watch()
            yield running
        # Connections abandoned by this app warn when collected: make that happen
        # now, inside this test, instead of in whichever test runs the collector.
        gc.collect()


async def wait_until(predicate: Callable[[], object], within: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail after ``within`` seconds."""
    # Polling: the state belongs to the code under test, which signals nothing.
    with anyio.move_on_after(within):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return
    pytest.fail(f"timed out after {within}s waiting for {what}")


@asynccontextmanager
async def no_stray_tasks(within: float) -> AsyncIterator[None]:
    """Fail if asyncio tasks started in the block are still running ``within`` seconds later.

    A driver that cleans up a cancelled connection in a task of its own must
    finish that cleanup; a task that never ends is a leaked connection, and would
    also hang the event loop's shutdown. Stragglers are cancelled (twice: cleanup
    code may wait again after the first cancellation) before the test fails.
    """
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()

    def stray() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}

    with anyio.move_on_after(within):
        while stray():  # noqa: ASYNC110 - nothing signals the end of foreign tasks
            await anyio.sleep(0.05)
    left = stray()
    if not left:
        return
    kinds = Counter(getattr(t.get_coro(), "__qualname__", repr(t)) for t in left)
    described = ", ".join(f"{count} x {name}" for name, count in sorted(kinds.items()))
    for _ in range(2):
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=1.0)
    pytest.fail(f"asyncio tasks still running {within:g}s after the burst: {described}")


@contextmanager
def no_connection_warnings() -> Iterator[None]:
    """Fail if SQLAlchemy warned (e.g. a non-checked-in connection was collected).

    Records every warning even where pytest does not turn warnings into errors,
    collects garbage so abandoned connections are found now, and re-emits the
    warnings it does not judge.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    judged = [w for w in caught if issubclass(w.category, SAWarning | ResourceWarning)]
    for w in caught:
        if w not in judged:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    assert not judged, "warnings: " + "; ".join(str(w.message) for w in judged)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, exception groups flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _open_files_under(path: Path) -> list[str]:
    """Files of this process open below ``path`` (Linux only; [] elsewhere)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return []
    found = []
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


#: What a request's unit of work is made of.
_UNIT_OR_SESSION = (UnitOfWork, _SASession, _SAAsyncSession)


# -- the suite ------------------------------------------------------------------------


class ConformanceSuite:
    """Every scenario of the portside contract; subclass it and set :attr:`harness`.

    Tests are parametrized by fixtures, so a database that is unavailable skips
    only its own tests: ``[sqlite-file-async]``, ``[postgresql-sync]`` and so on.
    """

    #: The integration under test.
    harness: ClassVar[Harness]

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    # -- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Async SQLAlchemy runs on asyncio only."""
        return "asyncio"

    @pytest.fixture(params=DATABASES)
    def conformance_backend(self, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        """The database kind of the test (its own files, or its own PostgreSQL checks)."""
        kind = str(request.param)
        admin = PostgreSQLAdmin(postgresql_url()) if kind == "postgresql" else None
        return Backend(kind, tmp_path, admin)

    @pytest.fixture(params=MODES)
    def conformance_mode(self, request: pytest.FixtureRequest) -> Mode:
        """Whether the handlers use async or sync sessions."""
        return cast(Mode, request.param)

    def _stage(self, backend: Backend, mode: Mode) -> Stage:
        harness = getattr(type(self), "harness", None)
        if harness is None:
            pytest.fail(f"{type(self).__name__} must set `harness = YourHarness()`")
        harness.background_results.clear()
        harness.hook_events.clear()
        return Stage(harness, backend, mode)

    @pytest.fixture
    def stage(self, conformance_backend: Backend, conformance_mode: Mode) -> Stage:
        """The harness, database kind and mode of one test."""
        return self._stage(conformance_backend, conformance_mode)

    @pytest.fixture
    def sync_stage(self, conformance_backend: Backend) -> Stage:
        """Like ``stage``, for the scenarios that only concern sync sessions."""
        return self._stage(conformance_backend, "sync")

    # -- commit before the response -----------------------------------------------------

    async def test_commit_happens_before_the_response_starts(self, stage: Stage) -> None:
        """When ``http.response.start`` is sent, the row is already visible elsewhere."""
        seen: list[int] = []
        async with stage.running() as app:

            async def check(_message: Message) -> None:
                seen.append(await app.count(name="early"))

            response = await app.request("POST", "/items", {"name": "early"}, check)
        assert response.status == 201
        assert seen == [1], "the write was not committed when the response started"

    async def test_read_your_write(self, stage: Stage) -> None:
        """A 201 carries the stored row; a second request reads it back."""
        async with stage.running() as app:
            created = await app.request("POST", "/items", {"name": "alpha"})
            assert created.status == 201, created.text
            body = created.json()
            assert body["name"] == "alpha"
            assert isinstance(body["id"], int)
            fetched = await app.request("GET", f"/items/{body['id']}")
            assert (fetched.status, fetched.json()) == (200, body)
            listed = await app.request("GET", "/items")
            assert listed.json() == {"names": ["alpha"]}
            assert (await app.request("GET", f"/items/{body['id'] + 1000}")).status == 404

    # -- rollback on errors ---------------------------------------------------------------

    async def _assert_nothing_stored(self, app: RunningApp) -> None:
        assert await app.count() == 0, "a failed request's write was committed"
        assert (await app.request("GET", "/items")).json() == {"names": []}

    async def test_handler_raising_rolls_back(self, stage: Stage) -> None:
        """An exception in the handler: the framework's 500, nothing stored."""
        async with stage.running() as app:
            response = await app.request("POST", "/items/raise", {"name": "raised"})
            assert response.status == 500
            await self._assert_nothing_stored(app)

    async def test_framework_http_error_rolls_back(self, stage: Stage) -> None:
        """The framework's HTTP exception (409): nothing stored."""
        async with stage.running() as app:
            response = await app.request("POST", "/items/http-error", {"name": "conflict"})
            assert response.status == 409
            await self._assert_nothing_stored(app)

    async def test_returned_error_response_rolls_back(self, stage: Stage) -> None:
        """A handler that *returns* a 422 rolls back like one that raises."""
        async with stage.running() as app:
            response = await app.request("POST", "/items/return-error", {"name": "rejected"})
            assert response.status == 422
            await self._assert_nothing_stored(app)

    async def test_redirect_after_post_commits(self, stage: Stage) -> None:
        """A 303 after a form POST is a success: committed before the redirect."""
        async with stage.running() as app:
            response = await app.request("POST", "/items/redirect", {"name": "redirected"})
            assert response.status == 303
            assert (response.header("location") or "").endswith("/items")
            assert await app.count(name="redirected") == 1

    async def test_failed_commit_answers_5xx(self, stage: Stage) -> None:
        """A commit that fails at COMMIT time (deferred FK) is never answered with a 2xx."""
        async with stage.running() as app:
            response = await app.request("POST", "/items/deferred", {"name": "orphan"})
            assert 500 <= response.status < 600, f"got {response.status} for a lost write"
            assert await app.count(Child) == 0
            assert app.checked_out() == 0
            after = await app.request("POST", "/items", {"name": "next"})
            assert after.status == 201, "the request after a failed commit must work"
            assert await app.count(name="next") == 1

    async def test_a_swallowed_statement_failure_never_commits(self, stage: Stage) -> None:
        """A handler that catches a failed statement and answers 201 gets a 5xx instead.

        PostgreSQL aborts the transaction and silently turns its COMMIT into a
        ROLLBACK; SQLite would keep the statements before the failure. Both answer
        the same: nothing committed, never a 2xx.
        """
        async with stage.running() as app:
            assert (await app.request("POST", "/items", {"name": "dup"})).status == 201
            response = await app.request("POST", "/items/swallowed", {"name": "dup"})
            assert 500 <= response.status < 600, f"got {response.status} for a lost write"
            assert await app.count(name="dup-kept") == 0
            await app.assert_no_transaction_left_open()
            after = await app.request("POST", "/items", {"name": "next"})
            assert after.status == 201, "the request after a refused commit must work"

    # -- sessions --------------------------------------------------------------------------

    async def test_one_session_per_request(self, stage: Stage) -> None:
        """Everything in one request that asks for the session gets the same one."""
        async with stage.running() as app:
            response = await app.request("GET", "/same-session")
            assert (response.status, response.json()) == (200, {"same": True})

    async def test_a_request_leaves_no_reference_cycle(self, stage: Stage) -> None:
        """A request's unit of work and sessions are freed when it ends, by reference counting.

        What waits for the cyclic garbage collector costs every request a share of
        its runs (a tenth of a PostgreSQL GET when each unit was such garbage).
        """
        async with stage.running() as app:
            created = await app.request("POST", "/items", {"name": "freed"})
            assert created.status == 201
            gc.collect()
            gc.disable()
            try:
                statuses = [
                    (await app.request("GET", f"/items/{created.json()['id']}")).status,
                    (await app.request("GET", "/items")).status,
                    (await app.request("POST", "/items", {"name": "freed-too"})).status,
                    (await app.request("POST", "/items/return-error", {"name": "x"})).status,
                    (
                        await app.request("POST", "/items/hooked", {"name": "y", "status": 201})
                    ).status,
                ]
                # What only a collection frees: the collector keeps it, instead of freeing it.
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                left = Counter(
                    type(o).__name__ for o in gc.garbage if isinstance(o, _UNIT_OR_SESSION)
                )
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
        assert statuses == [200, 200, 201, 422, 201]
        assert not left, f"freed only by the cyclic garbage collector: {left}"

    async def test_untouched_handler_never_touches_the_pool(self, stage: Stage) -> None:
        """A handler that never asks for a session checks out no connection."""
        async with stage.running() as app:
            before = app.checkouts
            response = await app.request("GET", "/untouched")
            assert (response.status, response.json()) == (200, {"ok": True})
            assert app.checkouts == before, "a request without a session used the pool"
            assert app.lifecycle.in_flight == 0

    async def test_sync_sql_never_runs_on_the_event_loop(self, sync_stage: Stage) -> None:
        """Sync sessions do all their I/O in worker threads, never on the loop's thread."""
        loop_thread = threading.get_ident()
        async with sync_stage.running() as app:
            created = await app.request("POST", "/items", {"name": "threaded"})
            assert created.status == 201
            assert (await app.request("GET", f"/items/{created.json()['id']}")).status == 200
            assert (await app.request("GET", "/same-session")).status == 200
            assert (await app.request("POST", "/items/raise", {"name": "x"})).status == 500
            assert (await app.request("POST", "/items/deferred", {"name": "y"})).status >= 500
            assert app.sql_threads, "the sync engine ran no SQL: do the handlers use it?"
            assert loop_thread not in app.sql_threads, "sync SQL ran on the event loop thread"

    async def test_sync_session_on_the_event_loop_raises(self, stage: Stage) -> None:
        """A sync session queried on the event loop fails at once (500), leaking nothing."""
        async with stage.running() as app:
            response = await app.request("GET", "/sync-on-loop")
            assert response.status == 500
            # Frameworks that report handler errors themselves (Litestar) raise nothing here.
            raised = [type(error).__name__ for error in app.runner.errors]
            assert raised in ([], ["BlockingSessionError"])
            assert app.sql_threads == set(), "the sync session ran SQL on the event loop"
            await app.assert_no_transaction_left_open()

    # -- websockets and mounted apps ------------------------------------------------------

    async def test_websocket_opens_a_unit_per_message(self, stage: Stage) -> None:
        """A websocket commits one unit per message and holds no connection in between."""
        async with stage.running() as app:
            async with app.runner.websocket("/ws/items") as socket:
                for name in ("ws-1", "ws-2", "ws-3"):
                    await socket.send_json({"name": name})
                    assert isinstance((await socket.receive_json())["id"], int)
                    assert app.checked_out() == 0, "a connection is held between messages"
                    assert app.lifecycle.in_flight == 0
                    assert await app.count(name=name) == 1
            assert socket.error is None
            await app.assert_no_transaction_left_open()

    async def test_websocket_gets_no_request_session(self, stage: Stage) -> None:
        """Asking for the request's session in a websocket says to open a unit per message."""
        async with stage.running() as app:
            async with app.runner.websocket("/ws/request-session") as socket:
                assert await socket.receive_json() == {"error": "NoRequestSessionError"}
            await app.assert_no_transaction_left_open()

    async def test_mounted_app_without_the_outer_install_says_so(self, stage: Stage) -> None:
        """portside on a mounted app whose lifespan never ran: an error saying what to do."""
        outer = stage.harness.mount(stage.build())
        if outer is None:
            pytest.skip(f"{stage.harness.name} does not compose apps by mounting them")
        async with AppRunner(outer) as runner:
            response = await runner.request("POST", "/inner/items", json={"name": "lost"})
        assert response.status == 500
        assert response.error is not None
        assert type(response.error).__name__ == "LifecycleStateError"
        assert "outer app" in str(response.error)

    async def test_session_used_after_the_response_refuses(self, stage: Stage) -> None:
        """A background task using the request's session gets UnitOfWorkEndedError."""
        results = stage.harness.background_results
        async with stage.running() as app:
            response = await app.request("POST", "/items/background", {"name": "bg"})
            assert response.status == 201
            await wait_until(lambda: results, 5.0, "the background task to report")
            assert results == ["UnitOfWorkEndedError"]
            assert await app.count(name="bg") == 1
            await app.assert_no_transaction_left_open()

    # -- cancellation, disconnects, exhaustion -----------------------------------------

    async def test_cancelled_burst_leaves_nothing_behind(self, stage: Stage) -> None:
        """200 requests cancelled mid-handler: no connection, transaction or warning left."""
        settings = stage.backend.settings(pool_timeout=5.0)
        async with stage.running(stage.build(settings)) as app:
            with no_connection_warnings():
                async with (
                    no_stray_tasks(within=settings.cleanup_timeout + 1),
                    anyio.create_task_group() as group,
                ):
                    for i in range(200):
                        body = {"name": f"cancelled-{i}", "seconds": 1.0}
                        group.start_soon(
                            functools.partial(app.request, "POST", "/items/slow", body)
                        )
                    await wait_until(
                        lambda: app.lifecycle.in_flight > 0, 10.0, "a handler to start"
                    )
                    await anyio.sleep(0.2)
                    group.cancel_scope.cancel()
            await app.assert_no_transaction_left_open()
            assert await app.count() == 0, "a cancelled request's write was committed"
            assert (await app.request("POST", "/items", {"name": "after"})).status == 201

    async def test_disconnect_burst_leaves_nothing_behind(self, stage: Stage) -> None:
        """Clients hanging up mid-request leave no connection or transaction behind."""
        async with stage.running() as app:
            with no_connection_warnings():
                async with no_stray_tasks(within=10.0):
                    async with anyio.create_task_group() as group:
                        for i in range(40):
                            body = {"name": f"gone-{i}", "seconds": 0.1}
                            group.start_soon(
                                functools.partial(
                                    app.runner.disconnect,
                                    "POST",
                                    "/items/slow",
                                    json=body,
                                    after=0.05,
                                )
                            )
                    with anyio.fail_after(30):
                        await app.runner.wait_idle()
            await app.assert_no_transaction_left_open()
            assert (await app.request("POST", "/items", {"name": "after"})).status == 201

    async def test_exhausted_pool_answers_503_and_recovers(self, stage: Stage) -> None:
        """Pool of 1, no overflow: the extra requests get 503, then the pool serves again."""
        settings = stage.backend.settings(pool_size=1, max_overflow=0, pool_timeout=0.5)
        async with stage.running(stage.build(settings)) as app:
            statuses: list[int] = []

            async def slow(i: int) -> None:
                body = {"name": f"slow-{i}", "seconds": 1.5}
                statuses.append((await app.request("POST", "/items/slow", body)).status)

            async with anyio.create_task_group() as group:
                for i in range(4):
                    group.start_soon(slow, i)
            assert sorted(statuses) == [201, 503, 503, 503]
            assert (await app.request("POST", "/items", {"name": "after"})).status == 201
            await app.assert_no_transaction_left_open()

    # -- transactions to build on: callbacks, retries, deadlines --------------------------

    async def test_callbacks_run_after_the_response_for_the_outcome(self, stage: Stage) -> None:
        """on_commit runs once the 2xx was sent; on_rollback when the status rolls back."""
        events = stage.harness.hook_events
        seen_at_start: list[list[str]] = []
        async with stage.running() as app:

            async def at_start(_message: Message) -> None:
                seen_at_start.append(list(events))

            body = {"name": "kept", "status": 201}
            response = await app.request("POST", "/items/hooked", body, at_start)
            assert response.status == 201, response.text
            await wait_until(lambda: events, 5.0, "the after-commit callback")
            assert events == ["commit:kept"]
            assert seen_at_start == [[]], "a callback ran before the response started"
            assert await app.count(name="kept") == 1
            body = {"name": "refused", "status": 422}
            assert (await app.request("POST", "/items/hooked", body)).status == 422
            await wait_until(lambda: len(events) == 2, 5.0, "the after-rollback callback")
            assert events == ["commit:kept", "rollback:refused"]
            assert await app.count(name="refused") == 0
            await app.assert_no_transaction_left_open()

    async def test_the_test_kit_captures_after_commit_callbacks(self, stage: Stage) -> None:
        """capture_on_commit() lists a request's callbacks instead of running them."""
        events = stage.harness.hook_events
        async with stage.running() as app:
            with capture_on_commit() as callbacks:
                body = {"name": "captured", "status": 201}
                assert (await app.request("POST", "/items/hooked", body)).status == 201
                await app.runner.wait_idle()
            assert len(callbacks) == 1
            assert events == []
            await callbacks.run()
            assert events == ["commit:captured"]

    async def _seed_counter(self, app: RunningApp) -> None:
        await app.run(lambda c: c.execute(insert(CounterRow).values(id=1, value=0)))

    async def _counter(self, app: RunningApp) -> int:
        statement = select(col(CounterRow.value)).where(col(CounterRow.id) == 1)
        return await app.run(lambda c: int(c.execute(statement).scalar_one()))

    async def _race(self, app: RunningApp, path: str, n: int) -> list[Any]:
        responses: list[Any] = []

        async def one() -> None:
            responses.append(await app.request("POST", path, {"by": 1}))

        async with anyio.create_task_group() as group:
            for _ in range(n):
                group.start_soon(one)
        return responses

    async def test_lost_races_are_retried_when_the_route_opts_in(self, stage: Stage) -> None:
        """Concurrent read-then-increment under SERIALIZABLE: all 2xx, none lost."""
        n = 8
        settings = stage.backend.settings(pool_size=n)
        async with stage.running(stage.build(settings)) as app:
            await self._seed_counter(app)
            responses = await self._race(app, "/counter/increment", n)
            assert [r.status for r in responses] == [200] * n, [r.text for r in responses]
            assert await self._counter(app) == n
            await app.assert_no_transaction_left_open()

    async def test_lost_races_answer_409_without_the_opt_in(self, stage: Stage) -> None:
        """Without retries, the losers get 409 with Retry-After; the winners' writes count."""
        if stage.backend.kind != "postgresql":
            pytest.skip("SQLite runs one writer at a time: its writes never lose a race")
        n = 8
        settings = stage.backend.settings(pool_size=n)
        async with stage.running(stage.build(settings)) as app:
            await self._seed_counter(app)
            responses = await self._race(app, "/counter/increment-once", n)
            statuses = [r.status for r in responses]
            assert set(statuses) <= {200, 409}, [r.text for r in responses]
            assert 409 in statuses, "no request lost the race; the scenario proves nothing"
            assert all(r.header("retry-after") for r in responses if r.status == 409)
            assert await self._counter(app) == statuses.count(200)
            await app.assert_no_transaction_left_open()

    async def _deadlock(self, app: RunningApp, path: str) -> list[Any]:
        await app.run(lambda c: c.execute(insert(CounterRow), [{"id": 1}, {"id": 2}]))
        responses: list[Any] = []

        async def one(first: int, second: int) -> None:
            body = {"first": first, "second": second}
            responses.append(await app.request("POST", path, body))

        async with anyio.create_task_group() as group:
            group.start_soon(one, 1, 2)
            group.start_soon(one, 2, 1)
        return responses

    async def _counters(self, app: RunningApp) -> list[int]:
        statement = select(col(CounterRow.value)).order_by(col(CounterRow.id))
        return await app.run(lambda c: [int(v) for v in c.execute(statement).scalars()])

    async def test_a_deadlock_between_two_routes_is_retried(self, stage: Stage) -> None:
        """Two requests locking two rows in opposite orders: with retries, both 2xx."""
        async with stage.running() as app:
            responses = await self._deadlock(app, "/counter/transfer")
            assert [r.status for r in responses] == [200, 200], [r.text for r in responses]
            assert await self._counters(app) == [2, 2]
            await app.assert_no_transaction_left_open()

    async def test_a_deadlock_without_the_opt_in_answers_409(self, stage: Stage) -> None:
        """Without retries the deadlock's victim gets 409; only the winner's writes count."""
        if stage.backend.kind != "postgresql":
            pytest.skip("SQLite runs one writer at a time: two writers never deadlock")
        async with stage.running() as app:
            responses = await self._deadlock(app, "/counter/transfer-once")
            assert sorted(r.status for r in responses) == [200, 409]
            assert await self._counters(app) == [1, 1]
            await app.assert_no_transaction_left_open()

    async def test_a_deadline_stops_a_runaway_query(self, stage: Stage) -> None:
        """The database stops the route's query at its deadline: 504, nothing left running."""
        async with stage.running() as app:
            with anyio.fail_after(10):
                response = await app.request("GET", "/slow-query")
            assert response.status == 504, response.text
            await app.assert_no_transaction_left_open()
            active = {p: s for p, s in (await app.backends()).items() if s == "active"}
            assert not active, f"a query is still running on the server: {active}"

    async def test_a_client_gone_mid_query_stops_it_and_rolls_back(self, stage: Stage) -> None:
        """The client hangs up mid-query (no deadline): the query stops, nothing is stored.

        ASGI servers keep running a request whose client left; portside notices the
        disconnect, stops the statement on the server and rolls the unit back. The
        statement would otherwise run for minutes.
        """
        async with stage.running() as app:
            await app.runner.disconnect("POST", "/items/runaway", json={"name": "gone"}, after=0.3)
            with anyio.fail_after(10):
                await app.runner.wait_idle()
            assert app.runner.errors == []
            assert await app.count(name="gone") == 0, "the unit of a client that left committed"
            assert app.checked_out() == 0
            await app.assert_no_transaction_left_open()
            active = {p: s for p, s in (await app.backends()).items() if s == "active"}
            assert not active, f"a query is still running on the server: {active}"
            after = await app.request("POST", "/items", {"name": "next"})
            assert after.status == 201, "the pool's connections must still work"

    async def test_a_client_gone_during_a_runaway_query_leaves_nothing(self, stage: Stage) -> None:
        """The client hangs up mid-query of a route with a deadline: all clean too."""
        async with stage.running() as app:
            await app.runner.disconnect("GET", "/slow-query", after=0.1)
            with anyio.fail_after(SLOW_QUERY_DEADLINE + 10):
                await app.runner.wait_idle()
            await app.assert_no_transaction_left_open()
            active = {p: s for p, s in (await app.backends()).items() if s == "active"}
            assert not active, f"a query is still running on the server: {active}"

    # -- lifespan ----------------------------------------------------------------------------

    async def test_startup_fails_against_an_unreachable_database(self, stage: Stage) -> None:
        """Startup fails with portside's StartupError instead of serving without a database."""
        if stage.backend.kind == "sqlite-memory":
            pytest.skip("an in-memory SQLite database is always reachable")
        settings = stage.backend.unreachable_settings(startup_timeout=1.0, connect_timeout=1.0)
        with pytest.raises((StartupError, BaseExceptionGroup)) as caught:
            async with AppRunner(stage.build(settings)):
                pass
        # A framework may run its lifespan in a task group and so wrap the error.
        leaves = _leaves(caught.value)
        assert all(isinstance(leaf, StartupError) for leaf in leaves), repr(caught.value)

    async def test_shutdown_disposes_every_engine(self, stage: Stage) -> None:
        """After the app stops, every engine is disposed and no connection remains."""
        directory = stage.backend.directory
        async with stage.running() as app:
            assert (await app.request("POST", "/items", {"name": "kept"})).status == 201
            assert (await app.request("GET", "/items")).status == 200
            pools = [engine.pool for engine in app.engines]
            if app.postgresql is not None:
                assert await app.backends(), "the app's connections should be visible"
        for engine, pool in zip(app.engines, pools, strict=True):
            assert engine.pool is not pool, f"engine {engine.url!r} was not disposed"
        if app.postgresql is not None:

            async def closed() -> bool:
                return not await app.backends()

            await wait_until_async(closed, 5.0, "the app's connections to close")
        if stage.backend.kind == "sqlite-file":
            assert _open_files_under(directory) == [], "database files are still open"

    async def test_restart_three_times(self, stage: Stage) -> None:
        """One app started and stopped three times works each time."""
        app = stage.build()
        for run in range(3):
            async with stage.running(app) as running:
                created = await running.request("POST", "/items", {"name": f"run-{run}"})
                assert created.status == 201, f"run {run}: {created.text}"
                fetched = await running.request("GET", f"/items/{created.json()['id']}")
                assert fetched.status == 200
                listed = await running.request("GET", "/items")
                assert listed.json() == {"names": [f"run-{run}"]}

    async def test_two_apps_at_once(self, stage: Stage) -> None:
        """Two apps in one process each get their own engines and data."""
        await stage.backend.prepare("second")
        first = stage.build(stage.backend.settings())
        second = stage.build(stage.backend.settings("second"))
        async with stage.running(first) as a, stage.running(second) as b:
            assert a.lifecycle is not b.lifecycle
            assert not {id(e) for e in a.engines} & {id(e) for e in b.engines}
            assert (await a.request("POST", "/items", {"name": "from-a"})).status == 201
            assert (await b.request("POST", "/items", {"name": "from-b"})).status == 201
            assert (await a.request("GET", "/items")).json() == {"names": ["from-a"]}
            assert (await b.request("GET", "/items")).json() == {"names": ["from-b"]}

    # -- health and several databases ----------------------------------------------------

    async def test_health_when_up(self, stage: Stage) -> None:
        """The readiness route answers 200 and lists the database."""
        async with stage.running() as app:
            response = await app.request("GET", "/health")
            assert response.status == 200, response.text
            assert response.json()["databases"]["default"]["up"] is True

    async def test_health_when_a_database_is_down(self, stage: Stage) -> None:
        """The readiness route answers 503 and names the database that is down.

        The second database ``analytics`` is taken away after startup: on
        PostgreSQL it is dropped (``DROP DATABASE ... WITH (FORCE)`` also ends the
        app's connections to it); a SQLite file is replaced by a directory and the
        app's idle connections to it are closed, as if the disk had gone. An
        in-memory database lives inside the process and cannot go down.
        """
        if stage.backend.kind == "sqlite-memory":
            pytest.skip("an in-memory SQLite database cannot become unreachable")
        await stage.backend.prepare("analytics")
        databases = {
            "default": stage.backend.settings(connect_timeout=2.0),
            "analytics": stage.backend.settings("analytics", connect_timeout=2.0),
        }
        async with stage.running(stage.build(databases)) as app:
            up = await app.request("GET", "/health")
            assert up.status == 200, up.text
            await _take_down(stage.backend, app, "analytics")
            down = await app.request("GET", "/health")
            assert down.status == 503, down.text
            body = down.json()
            assert body["down"] == ["analytics"]
            assert body["databases"]["default"]["up"] is True

    async def test_two_databases(self, stage: Stage) -> None:
        """``/analytics/count`` reads the second database, not the first."""
        await stage.backend.prepare("analytics")
        databases = {
            "default": stage.backend.settings(),
            "analytics": stage.backend.settings("analytics"),
        }
        async with stage.running(stage.build(databases)) as app:
            assert (await app.request("GET", "/analytics/count")).json() == {"count": 0}
            rows = [{"name": "a-1"}, {"name": "a-2"}]
            await app.run(lambda c: c.execute(insert(Item), rows), "analytics")
            assert (await app.request("POST", "/items", {"name": "d-1"})).status == 201
            response = await app.request("GET", "/analytics/count")
            assert (response.status, response.json()) == (200, {"count": 2})


async def wait_until_async(
    predicate: Callable[[], Awaitable[object]], within: float, what: str
) -> None:
    """Like :func:`wait_until` for an async predicate."""
    with anyio.move_on_after(within):
        while not await predicate():  # noqa: ASYNC110
            await anyio.sleep(0.05)
        return
    pytest.fail(f"timed out after {within}s waiting for {what}")


def _replace_with_directory(path: Path) -> None:
    """Delete a SQLite database and put a directory in its place: it cannot be opened."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()


async def _take_down(backend: Backend, app: RunningApp, name: str) -> None:
    """Make database ``name`` unreachable for the running app (see the health scenario)."""
    if backend.postgresql is not None:
        await backend.postgresql.drop(name)
        return
    await anyio.to_thread.run_sync(_replace_with_directory, backend.directory / f"{name}.db")
    db = app.lifecycle.database(name)
    if "sync" in db.kinds:
        await anyio.to_thread.run_sync(db.engine.dispose)
    if "async" in db.kinds:
        await db.async_engine.dispose()
