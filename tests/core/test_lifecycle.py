"""The lifecycle and its units of work, on every backend, sync and async."""

from __future__ import annotations

import logging
import sys
import threading

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import func, insert, select, text

from portside import (
    Lifecycle,
    LifecycleStateError,
    ShutdownError,
    ShuttingDownError,
    StartupError,
    UnitOfWorkEndedError,
)

from .conftest import SettingsFactory, create_tables, notes

pytestmark = pytest.mark.anyio


async def count_notes(lifecycle: Lifecycle) -> int:
    async with lifecycle.async_session(writes=False) as session:
        return int((await session.exec(select(func.count()).select_from(notes))).scalar_one())


async def backends_named(postgresql_url: str, app_name: str) -> int:
    """Server-side connections named ``app_name``, once closing ones have exited.

    The server drops a closed connection's row asynchronously, so poll briefly.
    """
    from portside import DatabaseSettings

    # This database's only: other runs on the server may use the same name.
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = :n AND datname = current_database()"
    )
    async with Lifecycle(DatabaseSettings(url=postgresql_url)) as observer:
        for _ in range(50):
            async with observer.async_session(writes=False) as session:
                left = int((await session.exec(query.bindparams(n=app_name))).scalar_one())
            if left == 0:
                break
            await anyio.sleep(0.1)
    return left


def checked_out(lifecycle: Lifecycle) -> list[int | None]:
    return [pool.checked_out for pool in lifecycle.database().pool_status().values()]


async def test_async_unit_commits_on_clean_exit_and_rolls_back_on_error(
    make_settings: SettingsFactory,
) -> None:
    async with Lifecycle(make_settings()) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(body="kept"))
        with pytest.raises(RuntimeError, match="boom"):
            async with lifecycle.async_session() as session:
                await session.exec(insert(notes).values(body="lost"))
                raise RuntimeError("boom")
        async with lifecycle.async_session() as session:
            bodies = (await session.exec(select(notes.c.body))).scalars().all()
        assert bodies == ["kept"]
        assert checked_out(lifecycle) == [0, 0]


async def test_sync_unit_commits_and_rolls_back_in_a_worker_thread(
    make_settings: SettingsFactory,
) -> None:
    def work(lifecycle: Lifecycle) -> list[str]:
        with lifecycle.session() as session:
            session.exec(insert(notes).values(body="kept"))
        with pytest.raises(RuntimeError), lifecycle.session() as session:
            session.exec(insert(notes).values(body="lost"))
            raise RuntimeError("boom")
        with lifecycle.session(writes=False) as session:
            return list(session.exec(select(notes.c.body)).scalars())

    async with Lifecycle(make_settings()) as lifecycle:
        await create_tables(lifecycle)
        assert await anyio.to_thread.run_sync(work, lifecycle) == ["kept"]
        assert checked_out(lifecycle) == [0, 0]


async def test_sync_unit_refuses_the_event_loop_thread(make_settings: SettingsFactory) -> None:
    async with Lifecycle(make_settings()) as lifecycle:
        with pytest.raises(LifecycleStateError, match="worker thread"), lifecycle.session():
            pass


async def test_session_refuses_use_after_its_unit_ended(make_settings: SettingsFactory) -> None:
    async with Lifecycle(make_settings()) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as async_session:
            await async_session.exec(select(notes))
        with pytest.raises(UnitOfWorkEndedError, match="its own unit of work"):
            await async_session.exec(select(notes))

        def sync_part() -> None:
            with lifecycle.session() as session:
                session.exec(select(notes))
            with pytest.raises(UnitOfWorkEndedError):
                session.exec(select(notes))

        await anyio.to_thread.run_sync(sync_part)
        assert checked_out(lifecycle) == [0, 0]


async def test_a_task_ending_units_in_a_loop_does_not_starve_a_waiting_one(
    make_settings: SettingsFactory, backend: str
) -> None:
    """A job loop ending unit after unit hands its connection to a waiting unit.

    Without a yield after the unit ends, the loop's next unit takes the connection
    back from the pool before the waiter runs, every time, until the loop is done.
    """
    if backend == "sqlite-memory":
        pytest.skip("in memory, units take turns in portside's own gate instead of the pool")
    order: list[str] = []
    async with Lifecycle(make_settings(pool_size=1, max_overflow=0)) as lifecycle:

        async def loop() -> None:
            for _ in range(20):
                async with lifecycle.async_session(writes=False) as session:
                    await session.exec(select(1))
                order.append("loop")

        async def waiter() -> None:
            async with lifecycle.async_session(writes=False) as session:
                await session.exec(select(1))
            order.append("waiter")

        async with anyio.create_task_group() as group:
            group.start_soon(loop)
            group.start_soon(waiter)
    assert order.index("waiter") <= 2


async def test_loops_sharing_a_full_pool_do_not_starve_a_waiting_unit(
    make_settings: SettingsFactory, backend: str
) -> None:
    """The yield is skipped only when the pool has room: two loops fill a pool of two."""
    if backend == "sqlite-memory":
        pytest.skip("in memory, units take turns in portside's own gate instead of the pool")
    order: list[str] = []
    async with Lifecycle(make_settings(pool_size=2, max_overflow=0)) as lifecycle:

        async def loop(name: str) -> None:
            for _ in range(20):
                async with lifecycle.async_session(writes=False) as session:
                    await session.exec(select(1))
                order.append(name)

        async def waiter() -> None:
            async with lifecycle.async_session(writes=False) as session:
                await session.exec(select(1))
            order.append("waiter")

        async with anyio.create_task_group() as group:
            group.start_soon(loop, "a")
            group.start_soon(loop, "b")
            group.start_soon(waiter)
    assert order.index("waiter") <= 4


async def test_cancelled_task_returns_its_connection(make_settings: SettingsFactory) -> None:
    inserted = anyio.Event()

    async def writer(lifecycle: Lifecycle) -> None:
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(body="cancelled"))
            inserted.set()
            await anyio.sleep(30)

    async with Lifecycle(make_settings()) as lifecycle:
        await create_tables(lifecycle)
        async with anyio.create_task_group() as group:
            group.start_soon(writer, lifecycle)
            await inserted.wait()
            group.cancel_scope.cancel()
        assert checked_out(lifecycle) == [0, 0]
        assert lifecycle.in_flight == 0
        assert await count_notes(lifecycle) == 0


async def test_postgresql_keeps_no_transaction_open_after_cancellation(
    postgresql_url: str,
) -> None:
    from portside import DatabaseSettings

    app_name = "portside-core-cancel"
    settings = DatabaseSettings(url=f"{postgresql_url}?application_name={app_name}")
    inserted = anyio.Event()

    async def writer(lifecycle: Lifecycle) -> None:
        async with lifecycle.async_session() as session:
            await session.exec(text("SELECT 1"))
            inserted.set()
            await anyio.sleep(30)

    async with Lifecycle(settings) as lifecycle:
        async with anyio.create_task_group() as group:
            group.start_soon(writer, lifecycle)
            await inserted.wait()
            group.cancel_scope.cancel()
        async with lifecycle.async_session() as session:
            states = (
                (
                    await session.exec(
                        text(
                            "SELECT state FROM pg_stat_activity "
                            "WHERE application_name = :name AND pid <> pg_backend_pid() "
                            "AND datname = current_database()"
                        ).bindparams(name=app_name)
                    )
                )
                .scalars()
                .all()
            )
        assert "idle in transaction" not in states


async def test_use_before_startup_and_after_shutdown_says_what_to_do(
    make_settings: SettingsFactory,
) -> None:
    lifecycle = Lifecycle(make_settings())
    with pytest.raises(LifecycleStateError, match="not started yet"):
        async with lifecycle.async_session():
            pass
    async with lifecycle:
        pass
    with pytest.raises(ShuttingDownError, match="new Lifecycle"):
        async with lifecycle.async_session():
            pass
    with pytest.raises(LifecycleStateError, match="single-use"):
        await lifecycle.startup()


async def test_ping_reports_every_database(make_settings: SettingsFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from portside import DatabaseSettings

    second = DatabaseSettings(url=f"sqlite:///{tmp_path / 'second.db'}")
    async with Lifecycle({"main": make_settings(pool_size=3), "second": second}) as lifecycle:
        statuses = await lifecycle.ping()
    assert list(statuses) == ["main", "second"]
    main = statuses["main"]
    assert main.up
    assert main.error is None
    assert main.latency is not None
    assert main.latency >= 0
    assert main.pools["async"].size == 3
    assert main.pools["async"].overflow == 0
    assert main.pools["sync"].checked_out == 0


async def test_startup_against_unreachable_server_fails_within_the_timeout() -> None:
    from portside import DatabaseSettings

    password = "pa55@w:rd"
    settings = DatabaseSettings(
        url="postgresql://app:pa55%40w%3Ard@127.0.0.1:1/nowhere",
        startup_timeout=1.0,
        connect_timeout=1.0,
    )
    with anyio.fail_after(15):  # a hang would fail here instead of blocking CI
        with pytest.raises(StartupError) as caught:
            async with Lifecycle({"orders": settings}):
                pass
    message = str(caught.value)
    assert "'orders'" in message
    assert "127.0.0.1:1" in message
    assert "within 1s" in message
    assert password not in message
    assert "pa55%40w%3Ard" not in message


async def test_startup_failure_disposes_what_it_built(postgresql_url: str) -> None:
    from portside import DatabaseSettings

    app_name = "portside-core-startup-dispose"
    good = DatabaseSettings(url=f"{postgresql_url}?application_name={app_name}")
    bad = DatabaseSettings(url="postgresql://127.0.0.1:1/x", startup_timeout=0.5)
    with pytest.raises(StartupError, match="'bad'"):
        async with Lifecycle({"good": good, "bad": bad}):
            pass
    assert await backends_named(postgresql_url, app_name) == 0


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://app:S3cr%2Ft%40x@127.0.0.1:1/db", ["S3cr/t@x", "S3cr%2Ft%40x"]),
        ("postgresql://app@127.0.0.1:1/db?password=Q9secret", ["Q9secret"]),
    ],
)
async def test_logs_and_errors_carry_no_password(
    caplog: pytest.LogCaptureFixture, url: str, secrets: list[str]
) -> None:
    from portside import DatabaseSettings

    caplog.set_level(logging.DEBUG)
    settings = DatabaseSettings(url=url, startup_timeout=0.5, echo=True)
    with pytest.raises(StartupError) as caught:
        async with Lifecycle(settings):
            pass
    texts = [caplog.text, str(caught.value), repr(settings), repr(Lifecycle(settings))]
    for secret in secrets:
        for shown in texts:
            assert secret not in shown
    assert "127.0.0.1:1" in caplog.text  # the masked URL is logged


async def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from portside import DatabaseSettings

    monkeypatch.setitem(sys.modules, "aiosqlite", None)
    # "both" asks for the async engine explicitly ("auto" would start without it).
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'x.db'}", engines="both")
    with pytest.raises(StartupError, match=r"'aiosqlite' is not installed.*portside\[sqlite\]"):
        async with Lifecycle(settings):
            pass


async def test_shutdown_waits_for_units_in_flight(make_settings: SettingsFactory) -> None:
    holding = anyio.Event()
    lifecycle = Lifecycle(make_settings(shutdown_timeout=10))
    await lifecycle.startup()
    await create_tables(lifecycle)

    async def slow_writer() -> None:
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(body="finished during drain"))
            holding.set()
            await anyio.sleep(0.3)

    async with anyio.create_task_group() as group:
        group.start_soon(slow_writer)
        await holding.wait()
        group.start_soon(lifecycle.shutdown)
        await anyio.sleep(0.05)
        with pytest.raises(ShuttingDownError):
            async with lifecycle.async_session():
                pass
    assert not lifecycle.running
    assert lifecycle.in_flight == 0


async def test_shutdown_reports_every_disposal_failure(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from portside import DatabaseSettings

    lifecycle = Lifecycle(
        {"a": make_settings(), "b": DatabaseSettings(url=f"sqlite:///{tmp_path / 'b.db'}")}
    )
    await lifecycle.startup()
    for name in ("a", "b"):
        adapter = lifecycle.database(name).sync_port()
        real_dispose = adapter.dispose

        def failing_dispose(real=real_dispose, name=name) -> None:  # type: ignore[no-untyped-def]
            real()
            raise OSError(f"disk on fire under {name}")

        monkeypatch.setattr(adapter, "dispose", failing_dispose)
    with pytest.raises(ShutdownError) as caught:
        await lifecycle.shutdown()
    assert "disk on fire under a" in str(caught.value)
    assert "disk on fire under b" in str(caught.value)


def test_sync_only_lifecycle_runs_under_trio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from portside import DatabaseSettings

    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'trio.db'}", engines="sync")

    async def main() -> list[str]:
        async with Lifecycle(settings) as lifecycle:
            await create_tables(lifecycle)

            def work() -> list[str]:
                with lifecycle.session() as session:
                    session.exec(insert(notes).values(body="from trio"))
                with lifecycle.session(writes=False) as session:
                    return list(session.exec(select(notes.c.body)).scalars())

            assert threading.current_thread() is threading.main_thread()
            return await anyio.to_thread.run_sync(work)

    assert anyio.run(main, backend="trio") == ["from trio"]


def test_async_engines_under_trio_fail_with_advice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from portside import DatabaseSettings

    # "both" asks for the async engine explicitly ("auto" would leave it out under trio).
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'trio.db'}", engines="both")

    async def main() -> None:
        async with Lifecycle(settings):
            pass

    with pytest.raises(StartupError, match="engines='sync'"):
        anyio.run(main, backend="trio")


async def test_refused_authentication_fails_at_once(postgresql_url: str) -> None:
    from sqlalchemy.engine import make_url

    from portside import DatabaseSettings

    url = make_url(postgresql_url).set(username="portside_no_such_role", password=None)
    settings = DatabaseSettings(url=url.render_as_string(hide_password=False), startup_timeout=60)
    with anyio.fail_after(20), pytest.raises(StartupError, match="portside_no_such_role"):
        # retrying cannot fix authentication; the 60 s budget must not be spent on it
        async with Lifecycle(settings):
            pass


async def test_ping_reports_down_while_not_running(make_settings: SettingsFactory) -> None:
    lifecycle = Lifecycle(make_settings())
    assert not (await lifecycle.ping())["default"].up
    async with lifecycle:
        assert (await lifecycle.ping())["default"].up
    status = (await lifecycle.ping())["default"]
    assert not status.up
    assert status.error == "shut down"
