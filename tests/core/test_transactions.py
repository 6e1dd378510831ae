"""After-commit hooks, deadlines and retries on the bare core (every backend)."""

from __future__ import annotations

import uuid

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select, text, update
from sqlalchemy.exc import DBAPIError

import portside
from portside import Lifecycle, RetryPolicy, UnitOfWork
from portside.failures import Kind, classify
from portside_testing import OuterTransaction
from tests.core.conftest import SettingsFactory

pytestmark = pytest.mark.anyio

metadata = MetaData()
# Unique per run: other test runs may share the PostgreSQL database.
counters = Table(
    f"portside_tx_counters_{uuid.uuid4().hex[:8]}",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", Integer, nullable=False),
    Column("note", String(50)),
)


async def _tables(lifecycle: Lifecycle) -> None:
    async with lifecycle.database().async_engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
        await connection.execute(insert(counters), [{"id": 1, "value": 0}, {"id": 2, "value": 0}])


async def _drop(lifecycle: Lifecycle) -> None:
    async with lifecycle.database().async_engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)


# -- hooks ------------------------------------------------------------------------------


async def test_on_commit_runs_after_commit_and_on_rollback_only_on_rollback(
    make_settings: SettingsFactory,
) -> None:
    events: list[str] = []

    async def sent() -> None:
        events.append("async-commit")

    async with Lifecycle(make_settings()) as lifecycle:
        await _tables(lifecycle)
        async with lifecycle.async_session() as session:
            await session.exec(update(counters).values(value=1))
            portside.on_commit(session, lambda: events.append("commit"))
            portside.on_commit(session, sent)
            portside.on_rollback(session, lambda: events.append("rollback"))
            assert events == []
        assert events == ["commit", "async-commit"]
        events.clear()
        with pytest.raises(RuntimeError):
            async with lifecycle.async_session() as session:
                portside.on_commit(session, lambda: events.append("commit"))
                portside.on_rollback(session, lambda: events.append("rollback"))
                raise RuntimeError
        assert events == ["rollback"]
        await _drop(lifecycle)


async def test_a_rolled_back_savepoint_drops_its_callbacks(
    make_settings: SettingsFactory,
) -> None:
    events: list[str] = []
    async with Lifecycle(make_settings()) as lifecycle:
        await _tables(lifecycle)
        async with lifecycle.async_session() as session:
            portside.on_commit(session, lambda: events.append("outer"))
            savepoint = await session.begin_nested()
            portside.on_commit(session, lambda: events.append("dropped"))
            inner = await session.begin_nested()
            portside.on_commit(session, lambda: events.append("dropped-inner"))
            await inner.commit()
            await savepoint.rollback()
            async with session.begin_nested():
                portside.on_commit(session, lambda: events.append("released"))
        assert events == ["outer", "released"]
        await _drop(lifecycle)


async def test_a_failing_callback_is_logged_and_the_others_run(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []

    def broken() -> None:
        raise ValueError("smtp refused postgresql://app:hunter2@mail/x")

    async with Lifecycle(make_settings()) as lifecycle:
        unit = lifecycle.unit_of_work()
        async with unit:
            await (await unit.async_session()).exec(text("SELECT 1"))
            unit.on_commit(broken)
            unit.on_commit(lambda: events.append("after"))
        assert unit.committed
    assert events == ["after"]
    # Not "callback" in any message: the database path holds the test's name.
    failures = [r for r in caplog.records if r.module == "hooks"]
    assert len(failures) == 1
    message = failures[0].getMessage()
    assert "broken" in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_hooks_of_a_sync_unit(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []

    async def async_callback() -> None:
        events.append("async")

    with Lifecycle.blocking(make_settings()) as lifecycle:
        with lifecycle.session() as session:
            session.exec(text("SELECT 1"))
            portside.on_commit(session, lambda: events.append("sync"))
            portside.on_commit(session, async_callback)
        # No event loop in this thread: the async callback is reported, not lost.
        assert events == ["sync"]
        assert "did not run" in caplog.text
        assert "async_callback" in caplog.text

        def in_worker_thread() -> None:
            with lifecycle.session() as session:
                session.exec(text("SELECT 1"))
                portside.on_commit(session, async_callback)

        async def from_the_loop() -> None:
            await anyio.to_thread.run_sync(in_worker_thread)

        anyio.run(from_the_loop)
    assert events == ["sync", "async"]


async def test_on_commit_needs_a_unit_session(make_settings: SettingsFactory) -> None:
    async with Lifecycle(make_settings()) as lifecycle:
        session = portside.AsyncSession(lifecycle.database().async_engine)
        with pytest.raises(portside.LifecycleStateError, match="unit of work"):
            portside.on_commit(session, lambda: None)
        await session.close()


async def test_on_commit_after_the_unit_ended_says_so(make_settings: SettingsFactory) -> None:
    async with Lifecycle(make_settings()) as lifecycle:
        async with lifecycle.async_session() as session:
            pass
        with pytest.raises(portside.LifecycleStateError, match="after the unit of work ended"):
            portside.on_commit(session, lambda: None)
        with pytest.raises(portside.LifecycleStateError, match="after the unit of work ended"):
            portside.on_rollback(session.sync_session, lambda: None)


async def test_shutdown_waits_for_running_callbacks(make_settings: SettingsFactory) -> None:
    finished = anyio.Event()

    async def slow() -> None:
        await anyio.sleep(0.3)
        finished.set()

    async with Lifecycle(make_settings()) as lifecycle, anyio.create_task_group() as group:
        unit = lifecycle.unit_of_work()
        await (await unit.async_session()).exec(text("SELECT 1"))
        unit.on_commit(slow)
        await unit.finish(commit=True, run_hooks=False)
        group.start_soon(unit.run_hooks)
        await anyio.sleep(0.05)
        assert lifecycle.in_flight == 1, "a running callback counts as in flight"
    assert finished.is_set()


# -- deadlines ----------------------------------------------------------------------------


async def test_a_runaway_query_is_stopped_by_the_database(
    make_settings: SettingsFactory, backend: str
) -> None:
    slow = (
        "SELECT pg_sleep(5)"
        if backend == "postgresql"
        else "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
        "SELECT count(*) FROM r"
    )
    async with Lifecycle(make_settings(deadline=0.3)) as lifecycle:
        started = anyio.current_time()
        with pytest.raises(DBAPIError) as caught:
            async with lifecycle.async_session() as session:
                await session.exec(text(slow))
        assert anyio.current_time() - started < 3
        assert classify(caught.value).kind is Kind.TIMEOUT
        # The connection went back clean: the next unit has no deadline left over.
        async with lifecycle.async_session(deadline=30) as session:
            assert (await session.exec(text("SELECT 1"))).scalar() == 1
        assert lifecycle.database().async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_the_unit_deadline_overrides_the_setting(make_settings: SettingsFactory) -> None:
    async with Lifecycle(make_settings()) as lifecycle:
        with pytest.raises(DBAPIError):
            async with lifecycle.async_session(deadline=0.2) as session:
                await session.exec(
                    text(
                        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                        "SELECT count(*) FROM r"
                    )
                    if lifecycle.database().settings.url.startswith("sqlite")
                    else text("SELECT pg_sleep(5)")
                )


def test_a_sync_session_gets_the_deadline_too(make_settings: SettingsFactory) -> None:
    with Lifecycle.blocking(make_settings(deadline=0.2)) as lifecycle:
        sqlite = lifecycle.database().settings.url.startswith("sqlite")
        with pytest.raises(DBAPIError), lifecycle.session() as session:
            session.exec(
                text(
                    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                    "SELECT count(*) FROM r"
                )
                if sqlite
                else text("SELECT pg_sleep(5)")
            )
        with lifecycle.session(deadline=30) as session:
            assert session.exec(text("SELECT 1")).scalar() == 1


# -- retries --------------------------------------------------------------------------


async def _increment(unit: UnitOfWork) -> int:
    session = await unit.async_session()
    value = (await session.exec(select(counters.c.value).where(counters.c.id == 1))).scalar_one()
    await anyio.sleep(0.02)  # let the others read the same value
    await session.exec(update(counters).where(counters.c.id == 1).values(value=value + 1))
    return int(value)


@pytest.mark.parametrize("retries", [RetryPolicy(attempts=50, backoff=0.005), 0])
async def test_serializable_increments_retry_until_all_succeed(
    postgresql_url: str, retries: RetryPolicy | int
) -> None:
    settings = portside.DatabaseSettings(url=postgresql_url, pool_size=10)
    n = 10
    async with Lifecycle(settings) as lifecycle:
        await _tables(lifecycle)
        outcomes: list[str] = []

        async def one() -> None:
            try:
                await lifecycle.run(_increment, retries=retries, isolation_level="SERIALIZABLE")
            except DBAPIError as exc:
                outcomes.append(classify(exc).kind.name)
            else:
                outcomes.append("ok")

        async with anyio.create_task_group() as group:
            for _ in range(n):
                group.start_soon(one)
        async with lifecycle.async_session() as session:
            value = (
                await session.exec(select(counters.c.value).where(counters.c.id == 1))
            ).scalar_one()
        if retries:
            assert outcomes == ["ok"] * n
        else:
            assert "CONFLICT" in outcomes
            assert set(outcomes) <= {"ok", "CONFLICT"}
        assert value == outcomes.count("ok")
        assert lifecycle.in_flight == 0
        await _drop(lifecycle)


async def test_a_deadlock_is_retried(postgresql_url: str) -> None:
    settings = portside.DatabaseSettings(url=postgresql_url)
    async with Lifecycle(settings) as lifecycle:
        await _tables(lifecycle)
        both_locked = anyio.Event()
        locked = 0
        attempts = 0

        def work(first: int, second: int):  # type: ignore[no-untyped-def]
            async def run(unit: UnitOfWork) -> None:
                nonlocal locked, attempts
                attempts += 1
                session = await unit.async_session()
                await session.exec(
                    update(counters)
                    .where(counters.c.id == first)
                    .values(value=counters.c.value + 1)
                )
                locked += 1
                if locked == 2:
                    both_locked.set()
                with anyio.move_on_after(1):
                    await both_locked.wait()
                await session.exec(
                    update(counters)
                    .where(counters.c.id == second)
                    .values(value=counters.c.value + 1)
                )

            return run

        async with anyio.create_task_group() as group:
            group.start_soon(lambda: lifecycle.run(work(1, 2), retries=3))
            group.start_soon(lambda: lifecycle.run(work(2, 1), retries=3))
        async with lifecycle.async_session() as session:
            values = (await session.exec(select(counters.c.value).order_by(counters.c.id))).all()
        assert [row[0] for row in values] == [2, 2]
        assert attempts > 2, "no deadlock happened, so nothing was retried"
        await _drop(lifecycle)


def test_retry_policy_validates() -> None:
    assert RetryPolicy.of(0) is None
    assert RetryPolicy.of(2) == RetryPolicy(attempts=3)
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy.of(-1)
    policy = RetryPolicy(backoff=0.1, max_backoff=0.15)
    assert all(0 <= policy.delay(a) <= 0.15 for a in range(1, 6))


@pytest.mark.parametrize(
    "options",
    [{}, {"reset_session_state": False}, {"pgbouncer": True}, {"pool_pre_ping": False}],
    ids=["reset", "ping-only", "pgbouncer", "no-checkout-statement"],
)
async def test_postgresql_deadline_applies_and_never_outlives_its_unit(
    postgresql_url: str, options: dict[str, bool]
) -> None:
    """The deadline is set for each transaction of the unit (SET LOCAL), then gone.

    Whatever the checkout does, the SET LOCALs ride asyncpg's BEGIN: no statement
    (no round trip) of their own.
    """
    if options.get("pool_pre_ping") is False:
        options = {**options, "reset_session_state": False}
    settings = portside.DatabaseSettings(url=postgresql_url, pool_size=1, max_overflow=0, **options)
    statements: list[str] = []
    async with Lifecycle(settings) as lifecycle:
        engine = lifecycle.database().async_engine.sync_engine
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        for _ in range(2):
            async with lifecycle.async_session(deadline=20) as session:
                timeout = (await session.exec(text("SHOW statement_timeout"))).scalar_one()
                lock = (await session.exec(text("SHOW lock_timeout"))).scalar_one()
            assert timeout != "0", timeout
            assert lock == timeout
            async with lifecycle.async_session() as session:
                after = (await session.exec(text("SHOW statement_timeout"))).scalar_one()
            assert after == "0", "the deadline outlived its unit"
    own_trip = [s for s in statements if "set_config" in s]
    assert own_trip == [], "SET LOCAL in a round trip of its own"


async def test_postgresql_deadline_inside_a_tests_outer_transaction(postgresql_url: str) -> None:
    """A unit joining a transaction begun long ago (a test's outer one) still gets it.

    That BEGIN was sent already, so the SET LOCALs go in a statement of their own.
    """
    settings = portside.DatabaseSettings(url=postgresql_url, pool_size=2, max_overflow=0)
    with OuterTransaction():
        async with Lifecycle(settings) as lifecycle:
            async with lifecycle.async_session(deadline=20) as session:
                timeout = (await session.exec(text("SHOW statement_timeout"))).scalar_one()
            async with lifecycle.async_session() as session:
                await session.exec(text("SELECT 1"))
    assert timeout not in ("0", "1ms"), timeout


async def test_sqlite_deadline_never_outlives_its_unit(make_settings: SettingsFactory) -> None:
    """The progress handler goes with the connection back to the pool."""
    settings = make_settings(pool_size=1, max_overflow=0)
    if not (settings.url or "").startswith("sqlite"):
        pytest.skip("PostgreSQL's equivalent is test_postgresql_deadline_applies_...")
    async with Lifecycle(settings) as lifecycle:
        async with lifecycle.async_session(deadline=0.1) as session:
            await session.exec(text("SELECT 1"))
        await anyio.sleep(0.2)  # that deadline has passed
        async with lifecycle.async_session() as session:
            count = await session.exec(
                text(
                    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                    "WHERE i < 200000) SELECT count(*) FROM r"
                )
            )
            assert count.scalar_one() == 200000
