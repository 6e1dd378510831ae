"""SQLite writers take their turn at their first statement, and never wait in a circle.

Issue 12, items 8 and 9: a session handed out before a slow client's body arrives
must not hold up other writers, and two units writing two SQLite databases in
opposite orders must not both wait out the pool timeout.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside_starlette
from portside import DatabaseSettings, GateDeadlockError, Lifecycle
from portside.failures import classify
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Item, metadata

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _settings(tmp_path: Path, name: str = "app", **overrides: Any) -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite:///{tmp_path / name}.db", **overrides)


async def _create_table(lifecycle: Lifecycle, name: str | None = None) -> None:
    async with lifecycle.async_session(name) as session:
        await session.exec(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))  # type: ignore[call-overload]


async def test_a_session_nobody_used_yet_holds_up_no_writer(tmp_path: Path) -> None:
    async with Lifecycle(_settings(tmp_path, pool_timeout=0.5)) as lifecycle:
        await _create_table(lifecycle)
        idle = lifecycle.unit_of_work()
        await idle.async_session()  # asked for, no statement yet (a slow body)
        await idle.session()
        started = time.monotonic()
        async with lifecycle.async_session() as session:
            await session.exec(text("INSERT INTO t VALUES (1)"))  # type: ignore[call-overload]
        assert time.monotonic() - started < 0.4
        await idle.finish(commit=True)
        assert lifecycle.in_flight == 0


async def test_the_turn_is_taken_at_the_first_statement(tmp_path: Path) -> None:
    async with Lifecycle(_settings(tmp_path, pool_timeout=0.3)) as lifecycle:
        await _create_table(lifecycle)
        first = lifecycle.unit_of_work()
        session = await first.async_session()
        await session.exec(text("INSERT INTO t VALUES (1)"))  # type: ignore[call-overload]
        with pytest.raises(Exception, match="DATABASE_POOL_TIMEOUT"):
            async with lifecycle.async_session() as other:
                await other.exec(text("INSERT INTO t VALUES (2)"))  # type: ignore[call-overload]
        await first.finish(commit=True)
        assert lifecycle.in_flight == 0


async def test_a_slow_request_body_holds_up_no_other_writer(tmp_path: Path) -> None:
    """The README's Starlette order: session first, then the (trickling) body."""

    async def create(request: Request) -> JSONResponse:
        session = await portside_starlette.async_session(request)
        data = await request.json()
        await session.exec(text("INSERT INTO t VALUES (:x)").bindparams(x=data["x"]))  # type: ignore[call-overload]
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/", create, methods=["POST"])])
    portside_starlette.install(app, _settings(tmp_path, pool_timeout=0.5))
    async with AppRunner(app) as runner:
        await _create_table(portside_starlette.get_lifecycle(app))
        body_sent = anyio.Event()
        slow_status: list[int] = []

        async def receive() -> dict[str, Any]:
            await body_sent.wait()  # the client trickles its body
            return {"type": "http.request", "body": b'{"x": 1}', "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                slow_status.append(message["status"])

        async def slow_request() -> None:
            scope = runner._scope("POST", "/", [(b"content-type", b"application/json")])
            await app(scope, receive, send)

        async with anyio.create_task_group() as group:
            group.start_soon(slow_request)
            await anyio.sleep(0.1)  # the slow handler has its session by now
            fast = await runner.request("POST", "/", json={"x": 2})
            assert fast.status == 201  # before the fix: 503 after the pool timeout
            body_sent.set()
        assert slow_status == [201]


async def test_two_databases_in_opposite_orders_never_wait_in_a_circle(tmp_path: Path) -> None:
    settings = {
        "a": _settings(tmp_path, "a", pool_timeout=10),
        "b": _settings(tmp_path, "b", pool_timeout=10),
    }
    async with Lifecycle(settings) as lifecycle:
        await _create_table(lifecycle, "a")
        await _create_table(lifecycle, "b")
        both_hold_one = anyio.Event()
        holding = 0
        outcomes: dict[str, str] = {}

        async def write(first: str, second: str) -> None:
            nonlocal holding
            unit = lifecycle.unit_of_work()
            try:
                one = await unit.async_session(first)
                await one.exec(text("INSERT INTO t VALUES (1)"))  # type: ignore[call-overload]
                holding += 1
                if holding == 2:
                    both_hold_one.set()
                await both_hold_one.wait()
                two = await unit.async_session(second)
                await two.exec(text("INSERT INTO t VALUES (2)"))  # type: ignore[call-overload]
            except GateDeadlockError:
                outcomes[first] = "gave up"
                await unit.finish(commit=False)
            else:
                await unit.finish(commit=True)
                outcomes[first] = "committed"

        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(write, "a", "b")
            group.start_soon(write, "b", "a")
        assert time.monotonic() - started < 2  # not the 10 s pool timeout
        assert sorted(outcomes.values()) == ["committed", "gave up"]
        assert lifecycle.in_flight == 0


async def test_add_before_any_statement_still_takes_the_turn(tmp_path: Path) -> None:
    """``add()`` needs no connection; the first flush after it waits for the turn."""
    async with Lifecycle(_settings(tmp_path, pool_timeout=0.3)) as lifecycle:
        await lifecycle.database().create_all(metadata)
        async with lifecycle.async_session() as session:
            session.add(Item(name="first"))  # used to fail: no greenlet to wait in
        holder = lifecycle.unit_of_work()
        held = await holder.async_session()
        held.add(Item(name="held"))
        await held.flush()
        late = lifecycle.unit_of_work()
        session = await late.async_session()
        session.add(Item(name="late"))  # begins the transaction, takes no turn
        with pytest.raises(Exception, match="DATABASE_POOL_TIMEOUT"):
            await session.flush()
        await late.finish(commit=False)
        await holder.finish(commit=True)
        assert lifecycle.in_flight == 0


def test_a_circle_of_turns_is_a_conflict_the_client_may_retry() -> None:
    failure = classify(GateDeadlockError("circle"))
    assert (failure.status, failure.headers) == (409, {"Retry-After": "1"})


async def test_a_turn_granted_after_its_unit_ended_is_given_back(tmp_path: Path) -> None:
    """An abandoned worker thread (a cancelled sync handler) never keeps the turn."""
    async with Lifecycle(_settings(tmp_path, pool_timeout=2)) as lifecycle:
        await _create_table(lifecycle)
        holder = lifecycle.unit_of_work()
        await (await holder.async_session()).exec(text("INSERT INTO t VALUES (1)"))  # type: ignore[call-overload]
        abandoned = lifecycle.unit_of_work()
        session = await abandoned.session()
        outcome: list[str] = []

        def late_statement() -> None:
            try:
                session.exec(text("INSERT INTO t VALUES (2)"))  # type: ignore[call-overload]
            except Exception as exc:
                outcome.append(type(exc).__name__)

        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, late_statement)
            await anyio.sleep(0.2)  # the thread waits for the holder's turn
            await abandoned.finish(commit=False)  # the request was cancelled meanwhile
            await holder.finish(commit=True)  # the turn is free: the thread gets it
        assert outcome == ["UnitOfWorkEndedError"]
        started = time.monotonic()
        async with lifecycle.async_session() as next_session:
            await next_session.exec(text("INSERT INTO t VALUES (3)"))  # type: ignore[call-overload]
        assert time.monotonic() - started < 1, "the abandoned thread kept the turn"
        assert lifecycle.in_flight == 0
