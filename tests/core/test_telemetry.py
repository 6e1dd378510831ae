"""Telemetry on the bare core: exact metrics and spans after a scripted mix of units."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portside import DatabaseSettings, Lifecycle, RetryPolicy, UnitOfWork
from tests.otel_support import delta, providers, snapshot, spans, value

POOL = "db.client.connection.pool.name"


@pytest.fixture
def name() -> str:
    """A database name no other test uses, so its pool's data points are its own."""
    providers()
    return f"t{uuid.uuid4().hex[:8]}"


class BoomError(Exception):
    pass


@pytest.mark.anyio
@pytest.mark.postgresql
async def test_scripted_units_give_exact_metrics_and_spans(
    postgresql_url: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A password in the URL: no attribute may carry it.
    url = postgresql_url.replace("postgres@", "postgres:sekrit-pw@")
    settings = DatabaseSettings(
        url=url,
        engines="async",
        telemetry=True,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
        held_connection_threshold=0.1,
    )
    pool = f"{name}.async"
    async with Lifecycle({name: settings}) as lifecycle:
        before = snapshot()
        first_span = len(spans("portside unit of work"))
        for _ in range(2):  # two commits
            async with lifecycle.async_session(name) as session:
                await session.exec(text("SELECT 1"))
        with pytest.raises(BoomError):  # one rollback
            async with lifecycle.async_session(name) as session:
                await session.exec(text("SELECT 1"))
                raise BoomError
        # A pool timeout: the only connection is held by another unit, which holds it
        # unused while it waits (reported as held, once).
        async with lifecycle.async_session(name) as holder:
            await holder.exec(text("SELECT 1"))
            with pytest.raises(PoolTimeoutError):
                async with lifecycle.async_session(name) as session:
                    await session.exec(text("SELECT 1"))
        # A held connection: the unit sleeps between statements, twice (reported once).
        with caplog.at_level(logging.WARNING, logger="portside"):
            async with lifecycle.async_session(name) as session:
                await session.exec(text("SELECT 1"))
                await anyio.sleep(0.15)
                await session.exec(text("SELECT 1"))
                await anyio.sleep(0.15)
        after = snapshot()
        changes = delta(before, after)
        by_pool = {POOL: pool}
        assert value(changes, "portside.unit_of_work.commits", **{"portside.database": name}) == 4
        assert value(changes, "portside.unit_of_work.rollbacks", **{"portside.database": name}) == 2
        assert value(changes, "db.client.connection.timeouts", **by_pool) == 1
        assert value(changes, "portside.connection.held", **by_pool) == 2
        # Five successful checkouts; each one's use time recorded at checkin.
        assert value(changes, "db.client.connection.wait_time", **by_pool) == 5
        assert value(changes, "db.client.connection.use_time", **by_pool) == 5
        # Nobody waits, nothing is checked out; the pool's bounds.
        assert value(after, "db.client.connection.pending_requests", **by_pool) == 0
        assert (
            value(
                after,
                "db.client.connection.count",
                **by_pool,
                **{"db.client.connection.state": "used"},
            )
            == 0
        )
        assert (
            value(
                after,
                "db.client.connection.count",
                **by_pool,
                **{"db.client.connection.state": "idle"},
            )
            == 1
        )
        assert value(after, "db.client.connection.max", **by_pool) == 1
        assert value(after, "db.client.connection.idle.max", **by_pool) == 1
        assert value(after, "db.client.connection.create_time", **by_pool) >= 1

    held = [r for r in caplog.records if "sat unused" in r.getMessage()]
    assert [r.getMessage().split(" sat unused")[0] for r in held] == [
        f"database {name!r}: a connection (pool {pool})"
    ] * 2
    assert name in held[0].getMessage()
    assert "a unit of work outside a request" in held[0].getMessage()

    units = spans("portside unit of work")[first_span:]
    outcomes = [span.attributes["portside.unit_of_work.outcome"] for span in units]
    # The holder's unit ends after the timed-out one inside it.
    assert outcomes == ["commit", "commit", "rollback", "rollback", "commit", "commit"]
    # Checkouts that waited 1 ms or more get a span: the one that timed out did.
    checkouts = [s for s in spans("portside checkout") if s.attributes[POOL] == pool]
    unit_ids = {span.context.span_id for span in units}
    assert all(s.parent is not None and s.parent.span_id in unit_ids for s in checkouts)
    failed = [s for s in checkouts if not s.status.is_ok]
    assert len(failed) == 1
    assert failed[0].parent.span_id == units[3].context.span_id
    assert (failed[0].end_time - failed[0].start_time) / 1e9 >= 0.2

    text_seen = repr(after) + repr([dict(s.attributes or {}) for s in units + checkouts])
    assert "sekrit-pw" not in text_seen
    assert "127.0.0.1" not in text_seen


@pytest.mark.anyio
@pytest.mark.postgresql
@pytest.mark.parametrize("isolation_level", [None, "SERIALIZABLE"])
async def test_a_held_connection_is_reported_with_any_isolation_level(
    postgresql_url: str, name: str, isolation_level: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    # An isolation level gives the unit's session an execution_options() copy of the
    # engine, which must watch its connections as the engine does.
    settings = DatabaseSettings(
        url=postgresql_url, engines="async", telemetry=True, held_connection_threshold=0.05
    )
    async with Lifecycle({name: settings}) as lifecycle:
        before = snapshot()
        with caplog.at_level(logging.WARNING, logger="portside"):
            async with lifecycle.async_session(name, isolation_level=isolation_level) as session:
                level = (await session.exec(text("SHOW transaction_isolation"))).one()[0]
                await anyio.sleep(0.1)
                await session.exec(text("SELECT 1"))
            async with lifecycle.async_session(name, isolation_level=isolation_level) as session:
                await session.exec(text("SELECT 1"))
                await anyio.sleep(0.1)
            async with lifecycle.async_session(name, isolation_level=isolation_level) as session:
                await session.exec(text("SELECT 1"))
                await session.exec(text("SELECT 1"))
        changes = delta(before, snapshot())
    assert level == (isolation_level or "read committed").lower()
    assert value(changes, "portside.connection.held", **{POOL: f"{name}.async"}) == 2
    held = [r.getMessage() for r in caplog.records if "sat unused" in r.getMessage()]
    assert len(held) == 2
    assert "before its next statement" in held[0]
    assert "before it was returned" in held[1]


@pytest.mark.anyio
async def test_sync_units_in_worker_threads(tmp_path: Path, name: str) -> None:
    settings = DatabaseSettings(
        url=f"sqlite:///{tmp_path / 'sync.db'}", engines="sync", telemetry=True
    )
    async with Lifecycle({name: settings}) as lifecycle:
        before = snapshot()

        def work() -> None:
            with lifecycle.session(name) as session:
                session.exec(text("SELECT 1"))
            with pytest.raises(BoomError), lifecycle.session(name) as session:
                session.exec(text("SELECT 1"))
                raise BoomError

        await anyio.to_thread.run_sync(work)
        changes = delta(before, snapshot())
    database = {"portside.database": name}
    assert value(changes, "portside.unit_of_work.commits", **database) == 1
    assert value(changes, "portside.unit_of_work.rollbacks", **database) == 1
    assert value(changes, "db.client.connection.wait_time", **{POOL: f"{name}.sync"}) == 2


@pytest.mark.anyio
async def test_a_test_kits_connection_idle_between_units_is_not_held(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from portside_testing.outer_transaction import OuterTransaction

    settings = DatabaseSettings(
        url=f"sqlite:///{tmp_path / 'kit.db'}",
        engines="async",
        telemetry=True,
        held_connection_threshold=0.05,
    )
    with OuterTransaction(), caplog.at_level(logging.WARNING, logger="portside"):
        async with Lifecycle({name: settings}) as lifecycle:
            before = snapshot()
            for _ in range(2):  # one connection, checked out for the whole test
                async with lifecycle.async_session(name) as session:
                    await session.exec(text("SELECT 1"))
                await anyio.sleep(0.1)
            changes = delta(before, snapshot())
    assert value(changes, "portside.connection.held", **{POOL: f"{name}.async"}) == 0
    assert not [r for r in caplog.records if "sat unused" in r.getMessage()]
    assert value(changes, "portside.unit_of_work.commits", **{"portside.database": name}) == 2


def test_off_imports_no_opentelemetry_and_adds_no_listener(tmp_path: Path) -> None:
    script = f"""
import sys, anyio
from sqlalchemy import text
from portside import DatabaseSettings, Lifecycle, RetryPolicy, UnitOfWork

async def main():
    settings = DatabaseSettings(url="sqlite:///{tmp_path / "off.db"}")
    async with Lifecycle(settings) as lifecycle:
        async with lifecycle.async_session() as session:
            await session.exec(text("SELECT 1"))
        engine = lifecycle.database().async_engine.sync_engine
        assert not engine.dispatch.before_cursor_execute, "a statement listener"
        assert not engine.pool.dispatch.checkout, "a checkout listener"
        assert "connect" not in vars(engine.pool), "a wrapped checkout"
    assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"
    assert "portside.telemetry" not in sys.modules

anyio.run(main)
"""
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.anyio
async def test_alongside_sqlalchemy_instrumentation_each_statement_has_one_span(
    tmp_path: Path, name: str
) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    _, exporter = providers()
    settings = DatabaseSettings(
        url=f"sqlite:///{tmp_path / 'along.db'}", engines="async", telemetry=True
    )
    instrumentor = SQLAlchemyInstrumentor()
    async with Lifecycle({name: settings}) as lifecycle:
        engine = lifecycle.database(name).async_engine.sync_engine
        # It declares SQLAlchemy < 2.1; its engine listeners work on 2.1.
        instrumentor.instrument(engine=engine, skip_dep_check=True)
        try:
            first = len(exporter.get_finished_spans())
            async with lifecycle.async_session(name) as session:
                for number in range(3):
                    await session.exec(text(f"SELECT {number}"))
            new = exporter.get_finished_spans()[first:]
        finally:
            instrumentor.uninstrument()

    units = [s for s in new if s.name == "portside unit of work"]
    assert len(units) == 1
    # Its spans: one per statement, plus one for the engine's connect.
    texts = sorted(
        str(s.attributes.get("db.statement") or s.attributes.get("db.query.text"))
        for s in new
        if s.name not in ("portside unit of work", "portside checkout", "connect")
    )
    assert texts == ["SELECT 0", "SELECT 1", "SELECT 2"], [s.name for s in new]


@pytest.mark.anyio
@pytest.mark.postgresql
async def test_each_retry_of_a_lost_race_is_counted(postgresql_url: str, name: str) -> None:
    settings = DatabaseSettings(url=postgresql_url, engines="async", telemetry=True)
    table = f"counter_{name}"
    attempts = 0
    both_read = anyio.Event()
    readers = 0

    async def increment(unit: UnitOfWork) -> None:
        nonlocal attempts, readers
        attempts += 1
        session = await unit.async_session(name)
        value = (await session.exec(text(f"SELECT value FROM {table}"))).scalar_one()
        readers += 1
        if readers == 2:
            both_read.set()
        with anyio.move_on_after(1):  # the first attempts read the same value
            await both_read.wait()
        await session.exec(text(f"UPDATE {table} SET value = :v"), params={"v": value + 1})

    async with Lifecycle({name: settings}) as lifecycle:
        async with lifecycle.async_session(name) as session:
            await session.exec(text(f"CREATE TABLE {table} (value int NOT NULL)"))
            await session.exec(text(f"INSERT INTO {table} VALUES (0)"))
        try:
            before = snapshot()
            async with anyio.create_task_group() as group:
                for _ in range(2):
                    group.start_soon(
                        lambda: lifecycle.run(
                            increment,
                            retries=RetryPolicy(attempts=5, backoff=0.01),
                            isolation_level="SERIALIZABLE",
                        )
                    )
            changes = delta(before, snapshot())
        finally:
            async with lifecycle.async_session(name) as session:
                final = (await session.exec(text(f"SELECT value FROM {table}"))).scalar_one()
                await session.exec(text(f"DROP TABLE {table}"))

    assert final == 2
    assert attempts > 2, "the two units never conflicted"
    retried = {"portside.database": name, "portside.retry.reason": "conflict"}
    assert value(changes, "portside.unit_of_work.retries", **retried) == attempts - 2
    assert value(changes, "portside.unit_of_work.commits", **{"portside.database": name}) == 2
