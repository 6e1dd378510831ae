"""Read replicas in the core: settings, the token, routing and faults on a real replica.

The scenarios through the web integrations are the conformance suite's
(``ReplicaConformanceSuite``); these check what the core promises on its own.
"""

from __future__ import annotations

import json
import time

import anyio
import pytest
from sqlalchemy import func, text
from sqlmodel import select

from portside import (
    ConfigurationError,
    DatabaseSettings,
    Lifecycle,
    LifecycleStateError,
    ReplicaState,
    ReplicaWriteError,
    is_database_unavailable,
)
from portside.asgi import error_response
from portside.check import main
from portside.consistency import format_token, parse_token, read_token, token_headers
from portside.replicas import format_lsn, parse_lsn
from tests.production.pgbouncer import free_port
from tests.replicas.streaming import StreamingReplica

IN_RECOVERY = select(func.pg_is_in_recovery())


# -- settings and the token (no server needed) --------------------------------------------


def test_replica_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comma-separated, masked like every URL, each with both drivers derived."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cret@primary/db")
    monkeypatch.setenv(
        "DATABASE_REPLICA_URLS",
        "postgresql://app:s3cret@r1/db, postgresql+asyncpg://app:s3cret@r2/db,",
    )
    monkeypatch.setenv("DATABASE_REPLICA_MAX_LAG", "2.5")
    monkeypatch.setenv("DATABASE_REPLICA_ROUTING", "false")
    settings = DatabaseSettings()
    assert len(settings.replica_urls) == 2
    assert "s3cret" not in repr(settings)
    assert (settings.replica_max_lag, settings.replica_routing) == (2.5, False)
    first, second = settings.replica_settings()
    assert first.masked_url == "postgresql+psycopg://app:***@r1/db"
    assert first.masked_async_url == "postgresql+asyncpg://app:***@r1/db"
    assert second.masked_url == "postgresql+psycopg://app:***@r2/db"
    assert first.replica_urls == ()


def test_replicas_of_sqlite_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="streaming replicas") as caught:
        DatabaseSettings(url="sqlite://", replica_urls="postgresql://u:s3cret@r/db")
    assert "s3cret" not in str(caught.value)


def test_lsn_round_trip() -> None:
    assert parse_lsn("0/3000148") == 0x3000148
    assert parse_lsn("A/FF") == (0xA << 32) | 0xFF
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    for garbage in ("", "3000148", "x/y", "123456789/0", "/1", "1/"):
        with pytest.raises(ValueError, match=r"WAL position|invalid literal"):
            parse_lsn(garbage)


def test_token_round_trip_and_garbage() -> None:
    positions = {"default": 0x3000148, "a|b:c": 7}
    assert parse_token(format_token(positions)) == positions
    for garbage in ("", "garbage", "default:zz/zz", ":", "|||", "\x00\xff", "a:1/2/3"):
        assert parse_token(garbage) == {}
    assert parse_token("x:1/2|bad|y:0/3") == {"x": (1 << 32) | 2, "y": 3}


def test_token_is_read_from_header_or_cookie() -> None:
    cookie = b"theme=dark; portside_lsn=default:0/10; other=1"
    assert read_token([(b"cookie", cookie)]) == {"default": 16}
    assert read_token([(b"cookie", cookie), (b"portside-lsn", b"default:0/20")]) == {"default": 32}
    assert read_token([(b"cookie", b"portside_lsn=garbage")]) is None
    assert read_token([(b"accept", b"*/*")]) is None
    (set_cookie, header) = token_headers({"default": 16})
    assert set_cookie == (
        b"set-cookie",
        b"portside_lsn=default:0/10; Path=/; Max-Age=300; HttpOnly; SameSite=Lax",
    )
    assert header == (b"portside-lsn", b"default:0/10")


# -- on a real streaming replica -----------------------------------------------------------


def settings_for(primary: str, replica: StreamingReplica, **overrides: object) -> DatabaseSettings:
    values: dict[str, object] = {
        "url": primary,
        "engines": "both",
        "replica_urls": [replica.url()],
        "replica_check_interval": 0.1,
        "replica_wait": 0.3,
    }
    return DatabaseSettings(**(values | overrides))


@pytest.mark.anyio
async def test_read_only_units_read_the_replica_others_the_primary(
    postgresql_url: str, streaming_replica: StreamingReplica
) -> None:
    async with Lifecycle(settings_for(postgresql_url, streaming_replica)) as lifecycle:
        async with lifecycle.async_session(writes=False) as session:
            assert (await session.exec(IN_RECOVERY)).one() is True
        async with lifecycle.async_session(writes=True) as session:
            assert (await session.exec(IN_RECOVERY)).one() is False
        async with lifecycle.unit_of_work(writes=False) as unit:
            unit.use_primary()
            assert (await (await unit.async_session()).exec(IN_RECOVERY)).one() is False

        def sync_reads() -> tuple[bool, bool]:
            with lifecycle.session(writes=False) as read, lifecycle.session() as write:
                return read.exec(IN_RECOVERY).one(), write.exec(IN_RECOVERY).one()

        assert await anyio.to_thread.run_sync(sync_reads) == (True, False)


@pytest.mark.anyio
async def test_use_primary_after_the_first_query_is_refused(
    postgresql_url: str, streaming_replica: StreamingReplica
) -> None:
    settings = settings_for(postgresql_url, streaming_replica)
    async with Lifecycle(settings) as lifecycle, lifecycle.unit_of_work(writes=False) as unit:
        session = await unit.async_session()
        await session.exec(IN_RECOVERY)
        with pytest.raises(LifecycleStateError, match="before the first query"):
            unit.use_primary()


@pytest.mark.anyio
async def test_a_write_on_the_replica_says_how_to_ask_for_the_primary(
    postgresql_url: str, streaming_replica: StreamingReplica
) -> None:
    """A 500-class error naming use_primary; the replica's pool is not thrown away."""
    async with Lifecycle(settings_for(postgresql_url, streaming_replica)) as lifecycle:
        replica_set = lifecycle.database().replicas
        assert replica_set is not None
        (replica,) = replica_set.replicas
        for kind in ("async", "sync"):
            connects_before = replica.engine(kind).pool.checkedin()  # type: ignore[attr-defined]
            with pytest.raises(ReplicaWriteError) as caught:
                if kind == "async":
                    async with lifecycle.async_session(writes=False) as session:
                        await session.exec(text("CREATE TEMP TABLE t (x int)"))  # type: ignore[call-overload]
                else:

                    def write() -> None:
                        with lifecycle.session(writes=False) as session:
                            session.exec(text("CREATE TEMP TABLE t (x int)"))  # type: ignore[call-overload]

                    await anyio.to_thread.run_sync(write)
            assert "use_primary(request)" in str(caught.value)
            assert not is_database_unavailable(caught.value)
            assert error_response(caught.value)[0] == 500
            assert replica.in_rotation
            assert replica.failures == 0
            # The connection went back to the pool instead of being invalidated.
            assert replica.engine(kind).pool.checkedin() >= max(1, connects_before)  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_only_units_that_wrote_read_the_commit_position(
    postgresql_url: str, streaming_replica: StreamingReplica
) -> None:
    async with Lifecycle(settings_for(postgresql_url, streaming_replica)) as lifecycle:
        async with lifecycle.unit_of_work() as reader:
            await (await reader.async_session()).exec(IN_RECOVERY)
        assert reader.commit_positions == {}
        async with lifecycle.unit_of_work() as writer:
            session = await writer.async_session()
            await session.exec(text("CREATE TEMP TABLE t (x int)"))  # type: ignore[call-overload]
        async with lifecycle.unit_of_work() as later:
            await (await later.async_session()).exec(text("CREATE TEMP TABLE u (x int)"))  # type: ignore[call-overload]
        assert 0 < writer.commit_positions["default"] < later.commit_positions["default"]
        async with lifecycle.unit_of_work() as direct:  # on the connection: no ORM event
            connection = await (await direct.async_session()).connection()
            await connection.exec_driver_sql("CREATE TEMP TABLE v (x int)")
        assert direct.commit_positions["default"] > later.commit_positions["default"]

        def sync_write() -> dict[str, int]:
            unit = lifecycle.unit_of_work()
            unit.session_blocking().exec(text("CREATE TEMP TABLE w (x int)"))  # type: ignore[call-overload]
            unit.finish_blocking(commit=True)
            return unit.commit_positions

        assert (await anyio.to_thread.run_sync(sync_write))["default"] > 0


@pytest.mark.anyio
async def test_a_token_waits_for_the_replica_then_reads_the_primary(
    postgresql_url: str, streaming_replica: StreamingReplica
) -> None:
    """Replay paused: the read carrying the token waits ``replica_wait`` at most."""
    async with Lifecycle(settings_for(postgresql_url, streaming_replica)) as lifecycle:
        await anyio.to_thread.run_sync(streaming_replica.pause)
        try:
            async with lifecycle.unit_of_work() as writer:
                await (await writer.async_session()).exec(text("SELECT txid_current()"))  # type: ignore[call-overload]
            started = time.monotonic()
            async with lifecycle.unit_of_work(
                writes=False, positions=writer.commit_positions
            ) as reader:
                assert (await (await reader.async_session()).exec(IN_RECOVERY)).one() is False
            waited = time.monotonic() - started
            assert 0.25 < waited < 2.0, waited
        finally:
            await anyio.to_thread.run_sync(streaming_replica.resume)
        await anyio.to_thread.run_sync(streaming_replica.catch_up)
        async with lifecycle.unit_of_work(writes=False, positions=writer.commit_positions) as unit:
            assert (await (await unit.async_session()).exec(IN_RECOVERY)).one() is True


@pytest.mark.anyio
async def test_a_replica_down_at_startup_does_not_stop_startup(postgresql_url: str) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    settings = DatabaseSettings(
        url=postgresql_url, replica_urls=[down], connect_timeout=2, engines="both"
    )
    async with Lifecycle(settings) as lifecycle:
        status = (await lifecycle.ping())["default"]
        assert status.up
        (replica,) = status.replicas
        assert replica.state is ReplicaState.DOWN
        assert replica.error
        async with lifecycle.async_session(writes=False) as session:
            assert (await session.exec(IN_RECOVERY)).one() is False


def test_portside_check_lists_the_replicas(
    postgresql_url: str,
    streaming_replica: StreamingReplica,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgresql_url)
    monkeypatch.setenv("DATABASE_REPLICA_URLS", streaming_replica.url())
    assert main(["check", "--json"]) == 0
    (replica,) = json.loads(capsys.readouterr().out)["databases"]["default"]["replicas"]
    assert replica["state"] == "in rotation"
    assert replica["lag_s"] is not None
    assert main(["check"]) == 0
    assert "replica:    postgresql" in capsys.readouterr().out
