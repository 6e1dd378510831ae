"""The read-replica scenarios: routing, read-your-writes and failures, on a real replica.

They need a PostgreSQL streaming replica of the conformance database's server,
which the project under test provides as a ``streaming_replica`` fixture (an object
with the methods of :class:`StreamingReplicaControl`). Subclass
:class:`ReplicaConformanceSuite` next to your :class:`ConformanceSuite`::

    class TestMyFrameworkReplicas(ReplicaConformanceSuite):
        harness = MyHarness()

Each scenario runs with async and sync sessions; replay is paused and resumed
(``pg_wal_replay_pause()``) to make the replica lag on purpose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

import anyio
import anyio.to_thread
import pytest
from sqlalchemy.engine import make_url

from portside import ReplicaState
from portside.consistency import HEADER
from portside.replicas import Replica
from portside_testing.conformance.harness import Harness, Mode
from portside_testing.conformance.suite import (
    MODES,
    Backend,
    PostgreSQLAdmin,
    RunningApp,
    Stage,
    postgresql_url,
    wait_until,
)

__all__ = ["ReplicaConformanceSuite", "StreamingReplicaControl"]

#: The response header carrying the consistency token.
TOKEN_HEADER = HEADER
#: Tokens a client could send that must not break a request.
FORGED_TOKENS = (
    "garbage",
    "default:zz/zz",
    "default:0/0|default",
    "default:FFFFFFFF/FFFFFFFF",  # far in the future: no replica ever gets there
    "nope:1/1",
    "x" * 4000,
    "%ff%fe:1/2",
)


class StreamingReplicaControl(Protocol):
    """What the scenarios do to the replica (the ``streaming_replica`` fixture)."""

    def url(self, database: str | None = None) -> str:
        """A URL of ``database`` on the replica."""
        ...

    def pause(self) -> None:
        """Stop replaying WAL."""
        ...

    def resume(self) -> None:
        """Replay WAL again."""
        ...

    def stop(self) -> None:
        """Stop the replica server."""
        ...

    def start(self) -> None:
        """Start it again."""
        ...

    def catch_up(self, within: float = 30.0) -> None:
        """Wait until it has replayed everything the primary wrote so far."""
        ...


class ReplicaConformanceSuite:
    """The replica scenarios for one integration; subclass it and set :attr:`harness`."""

    harness: ClassVar[Harness]

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Async SQLAlchemy runs on asyncio only."""
        return "asyncio"

    @pytest.fixture(params=MODES)
    def conformance_mode(self, request: pytest.FixtureRequest) -> Mode:
        """Whether the handlers use async or sync sessions."""
        return cast(Mode, request.param)

    @pytest.fixture
    def replica(self, streaming_replica: StreamingReplicaControl) -> StreamingReplicaControl:
        """The replica, replaying (as a scenario that paused it may have left it)."""
        return streaming_replica

    @pytest.fixture
    def stage(
        self, replica: StreamingReplicaControl, conformance_mode: Mode, tmp_path: Path
    ) -> Stage:
        """The harness, the conformance database (with the replica) and the mode."""
        backend = Backend("postgresql", tmp_path, PostgreSQLAdmin(postgresql_url()))
        self.harness.background_results.clear()
        return Stage(self.harness, backend, conformance_mode)

    @asynccontextmanager
    async def running(
        self, stage: Stage, replica: StreamingReplicaControl, **overrides: Any
    ) -> AsyncIterator[RunningApp]:
        """Start an app whose database reads from the replica; tables replicated."""
        assert stage.backend.postgresql is not None
        replica_url = (
            make_url(replica.url(stage.backend.postgresql.database))
            .update_query_dict({"application_name": stage.backend.application_name})
            .render_as_string(hide_password=False)
        )
        values: dict[str, Any] = {
            "replica_urls": [replica_url],
            "replica_check_interval": 0.1,
            "replica_wait": 0.3,
            "replica_max_lag": 60.0,
        }
        settings = stage.backend.settings(**(values | overrides))
        async with stage.running(stage.build(settings)) as app:
            await anyio.to_thread.run_sync(replica.catch_up)
            yield app

    @staticmethod
    def replicas(app: RunningApp) -> tuple[Replica, ...]:
        """The replicas of the app's database."""
        replica_set = app.lifecycle.database().replicas
        assert replica_set is not None, "the app's database has no replicas"
        return replica_set.replicas

    def checked_out_of_replicas(self, app: RunningApp) -> int:
        """Connections checked out of the replicas' pools."""
        return sum(
            replica.engine(kind).pool.checkedout()  # type: ignore[attr-defined]
            for replica in self.replicas(app)
            for kind in replica.database.kinds
        )

    async def assert_nothing_leaked(self, app: RunningApp) -> None:
        """No connection of the app checked out, beyond a replica check in progress."""
        # The replica check borrows a connection for a moment, every 0.1s here.
        await wait_until(lambda: app.checked_out() == 0, 2, "the pools to be idle")
        await wait_until(lambda: self.checked_out_of_replicas(app) == 0, 2, "idle replicas")
        await app.assert_no_transaction_left_open()

    async def where(self, app: RunningApp, path: str = "/replica/where") -> bool:
        """Whether the request to ``path`` read from the replica."""
        response = await app.request("GET", path)
        assert response.status == 200, response.text
        return bool(response.json()["replica"])

    # -- routing ---------------------------------------------------------------------

    async def test_read_without_token_is_served_by_the_replica(
        self, stage: Stage, replica: StreamingReplicaControl
    ) -> None:
        """A GET reads from the replica; one that asks for the primary does not."""
        async with self.running(stage, replica) as app:
            assert await self.where(app) is True
            assert await self.where(app, "/replica/primary") is False
            created = await app.request("POST", "/items", {"name": "on-the-primary"})
            assert created.status == 201, created.text
            assert await app.count(name="on-the-primary") == 1

    async def test_routing_off_reads_the_primary(
        self, stage: Stage, replica: StreamingReplicaControl
    ) -> None:
        """``replica_routing=False``: every request uses the primary."""
        async with self.running(stage, replica, replica_routing=False) as app:
            assert await self.where(app) is False

    async def test_write_in_a_replica_routed_unit_is_the_documented_error(
        self, stage: Stage, replica: StreamingReplicaControl
    ) -> None:
        """A GET that writes: a 500 (never a 503), nothing stored, the replica stays in."""
        async with self.running(stage, replica) as app:
            response = await app.request("GET", "/replica/write")
            assert response.status == 500, response.text
            assert response.header("retry-after") is None
            assert "unavailable" not in response.text.lower()
            (only,) = self.replicas(app)
            assert only.state is ReplicaState.IN_ROTATION
            assert only.failures == 0, "a refused write must not count as a replica failure"
            assert await self.where(app) is True
            assert await app.count() == 0
            await self.assert_nothing_leaked(app)

    # -- read-your-writes --------------------------------------------------------------

    async def test_write_then_read_with_the_token_sees_it_while_replay_is_paused(
        self, stage: Stage, replica: StreamingReplicaControl
    ) -> None:
        """The token (cookie or header) makes the next read see the write; none: the replica."""
        async with self.running(stage, replica) as app:
            await anyio.to_thread.run_sync(replica.pause)
            try:
                created = await app.request("POST", "/items", {"name": "mine"})
                assert created.status == 201, created.text
                token = created.header(TOKEN_HEADER)
                assert token, "a write's response carries no consistency token"
                cookie = created.header("set-cookie") or ""
                assert cookie.startswith(f"portside_lsn={token};"), cookie

                stale = await app.request("GET", "/items")
                assert stale.json() == {"names": []}, "the paused replica served this read"
                for headers in ({"cookie": f"portside_lsn={token}"}, {TOKEN_HEADER: token}):
                    fresh = await app.runner.request("GET", "/items", headers=headers)
                    assert (fresh.status, fresh.json()) == (200, {"names": ["mine"]})
                reads = await app.request("GET", "/items/1")
                assert reads.header(TOKEN_HEADER) is None, "a read handed out a token"
            finally:
                await anyio.to_thread.run_sync(replica.resume)
            await anyio.to_thread.run_sync(replica.catch_up)
            await wait_until(
                lambda: all(r.in_rotation for r in self.replicas(app)), 5, "the replica"
            )
            # Replayed now: the token's read goes to the replica again.
            response = await app.runner.request(
                "GET", "/replica/where", headers={TOKEN_HEADER: token}
            )
            assert response.json() == {"replica": True}

    async def test_forged_token_is_still_answered(
        self, stage: Stage, replica: StreamingReplicaControl
    ) -> None:
        """Garbage, unknown databases and positions from the future: 200 every time."""
        async with self.running(stage, replica) as app:
            for token in FORGED_TOKENS:
                for headers in ({"cookie": f"portside_lsn={token}"}, {TOKEN_HEADER: token}):
                    response = await app.runner.request("GET", "/items", headers=headers)
                    assert response.status == 200, (token, response.text)
            await self.assert_nothing_leaked(app)

    # -- faults ---------------------------------------------------------------------------

    async def test_replica_stopped_mid_run_then_back(
        self, stage: Stage, replica: StreamingReplicaControl
    ) -> None:
        """Reads fall back to the primary (the first one retried there); the replica rejoins."""
        async with self.running(stage, replica) as app:
            assert (await app.request("POST", "/items", {"name": "kept"})).status == 201
            await anyio.to_thread.run_sync(replica.catch_up)
            assert await self.where(app) is True
            await anyio.to_thread.run_sync(replica.stop)
            try:
                responses = [await app.request("GET", "/items") for _ in range(10)]
                statuses = [response.status for response in responses]
                # The first read hit the dead replica before the response started, so
                # it was retried on the primary: no error at all.
                assert statuses == [200] * 10, statuses
                assert responses[-1].json() == {"names": ["kept"]}
                assert await self.where(app) is False
                (only,) = self.replicas(app)
                assert only.state is ReplicaState.DOWN
                await self.assert_nothing_leaked(app)
            finally:
                await anyio.to_thread.run_sync(replica.start)
            await wait_until(
                lambda: all(r.in_rotation for r in self.replicas(app)), 15, "the replica's return"
            )
            assert await self.where(app) is True
            await self.assert_nothing_leaked(app)

    async def test_lagging_replica_leaves_the_rotation_and_rejoins(
        self, stage: Stage, replica: StreamingReplicaControl
    ) -> None:
        """Beyond ``replica_max_lag`` reads go to the primary; caught up, back to the replica."""
        settings = {"replica_max_lag": 0.5, "replica_check_interval": 0.2}
        async with self.running(stage, replica, **settings) as app:
            await anyio.to_thread.run_sync(replica.pause)
            try:
                assert (await app.request("POST", "/items", {"name": "late"})).status == 201
                await wait_until(
                    lambda: all(r.state is ReplicaState.LAGGING for r in self.replicas(app)),
                    10,
                    "the replica to be found lagging",
                )
                assert await self.where(app) is False
                assert (await app.request("GET", "/items")).json() == {"names": ["late"]}
                health = await app.request("GET", "/health")
                assert health.status == 200, "a lagging replica made the app unready"
                (listed,) = health.json()["databases"]["default"]["replicas"]
                assert listed["state"] == "lagging"
                # Long past the positions the monitor keeps (max lag + 2 intervals), with
                # the primary idle: the replica still trails it, so it stays out.
                await anyio.sleep(1.5)
                assert all(r.state is ReplicaState.LAGGING for r in self.replicas(app))
            finally:
                await anyio.to_thread.run_sync(replica.resume)
            await wait_until(
                lambda: all(r.in_rotation for r in self.replicas(app)), 10, "the replica's return"
            )
            assert await self.where(app) is True
