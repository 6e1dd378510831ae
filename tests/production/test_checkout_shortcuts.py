"""Issue 18: the checkout's shortcuts keep every guarantee of a ping and a reset per checkout.

On PostgreSQL a checkout talks to the server only when it must: a connection used
in the last ``pool_pre_ping_idle`` seconds is checked for free (the server's
goodbye on its socket) and its first statement is run again on a new connection
if the connection turns out lost; a connection is reset only once a statement
that may have changed its session state ran on it; a unit keeps its connection
across its own commits. Each shortcut gets a test here showing the guarantee it
could break still holds, on both engines. Pools of one connection make every
request borrow the connection the one before used (the tests check the pid).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

import portside_fastapi
from portside import DatabaseSettings
from portside_fastapi import AsyncSessionDep, SessionDep
from portside_testing.asgi import AppRunner
from tests.production.load import checked_out, lifecycle_of
from tests.production.partition_proxy import PartitionProxy
from tests.production.postgres import (
    admin_execute,
    backends,
    database_name,
    terminate,
    with_application_name,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]

ENGINES = ["async", "sync"]
_STATE = text(
    "SELECT pg_backend_pid(), current_setting('search_path'), "
    "current_setting('statement_timeout'), current_setting('portside.flag', true)"
)
#: A function that changes session state inside, where no statement text shows it.
SETS_INSIDE = "portside_sets_inside"
_TABLE = "portside_shortcut_row"


def _state(row: Any) -> dict[str, Any]:
    pid, search_path, timeout, flag = row
    # A custom setting, once set, reads '' instead of NULL after a reset (PostgreSQL
    # keeps its placeholder): either way, no value.
    return {
        "pid": pid,
        "search_path": search_path,
        "statement_timeout": timeout,
        "flag": flag or None,
    }


def create_app(settings: DatabaseSettings) -> FastAPI:
    """Routes that read the connection's state, run one statement, or commit twice."""
    app = FastAPI()
    portside_fastapi.install(app, settings)

    @app.get("/async/state")
    async def async_state(session: AsyncSessionDep) -> dict[str, Any]:
        return _state((await session.exec(_STATE)).one())

    @app.get("/sync/state")
    def sync_state(session: SessionDep) -> dict[str, Any]:
        return _state(session.exec(_STATE).one())

    @app.post("/async/run")
    async def async_run(body: dict[str, str], session: AsyncSessionDep) -> dict[str, Any]:
        await session.exec(text(body["sql"]))
        return _state((await session.exec(_STATE)).one())

    @app.post("/sync/run")
    def sync_run(body: dict[str, str], session: SessionDep) -> dict[str, Any]:
        session.exec(text(body["sql"]))
        return _state(session.exec(_STATE).one())

    insert = text(f"INSERT INTO {_TABLE} (tag) VALUES (:tag) RETURNING pg_backend_pid()")

    @app.post("/async/twice", status_code=201)
    async def async_twice(tag: str, session: AsyncSessionDep) -> list[int]:
        first = (await session.exec(insert.bindparams(tag=tag))).scalar_one()
        await session.commit()
        second = (await session.exec(insert.bindparams(tag=tag))).scalar_one()
        return [first, second]

    @app.post("/sync/twice", status_code=201)
    def sync_twice(tag: str, session: SessionDep) -> list[int]:
        first = session.exec(insert.bindparams(tag=tag)).scalar_one()
        session.commit()
        second = session.exec(insert.bindparams(tag=tag)).scalar_one()
        return [first, second]

    return app


def one_connection(url: str, **overrides: Any) -> DatabaseSettings:
    values: dict[str, Any] = {
        "url": url,
        "pool_size": 1,
        "max_overflow": 0,
        "startup_timeout": 10,
    }
    return DatabaseSettings(**(values | overrides))


@pytest.fixture(scope="module")
def database(production_database: str) -> Iterator[str]:
    """The shared scratch database, with the function and table these tests use."""
    name = database_name(production_database)
    admin_execute(
        production_database,
        f"""CREATE OR REPLACE FUNCTION {SETS_INSIDE}() RETURNS int LANGUAGE plpgsql AS $$
        BEGIN
            SET search_path = portside_elsewhere, public;
            PERFORM set_config('portside.flag', 'leaked', false);
            RETURN 1;
        END $$""",
        f"CREATE TABLE IF NOT EXISTS {_TABLE} (id serial PRIMARY KEY, tag text NOT NULL)",
        database=name,
    )
    yield production_database
    admin_execute(
        production_database,
        f"DROP FUNCTION IF EXISTS {SETS_INSIDE}()",
        f"DROP TABLE IF EXISTS {_TABLE}",
        database=name,
    )


async def _gone(url: str, tag: str) -> None:
    """Wait until the server has no connection tagged ``tag`` left."""
    with anyio.fail_after(10):
        while backends(url, tag):  # noqa: ASYNC110 - polling the server
            await anyio.sleep(0.02)


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_connection_killed_while_idle_under_the_threshold_goes_unnoticed(
    engine: str, database: str
) -> None:
    """Idle far less than ``pool_pre_ping_idle``: no ping, yet the next request succeeds."""
    tag = f"portside-shortcut-kill-{uuid.uuid4().hex[:8]}"
    settings = one_connection(with_application_name(database, tag), pool_pre_ping_idle=3600)
    async with AppRunner(create_app(settings)) as runner:
        before = await runner.request("GET", f"/{engine}/state")
        assert before.status == 200, before.text
        assert terminate(database, tag) >= 1
        await _gone(database, tag)
        read = await runner.request("GET", f"/{engine}/state")
        write = await runner.request("POST", f"/{engine}/twice?tag={tag}")
        leaked = checked_out(runner)
    assert read.status == 200, read.text
    assert read.json()["pid"] != before.json()["pid"]  # a new connection, not an error
    assert write.status == 201, write.text
    assert leaked == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_connection_dropped_without_a_word_is_replaced_at_its_first_statement(
    engine: str, database: str
) -> None:
    """A flow a NAT forgot: nothing on the socket until the first statement is reset.

    Only the retry of the first statement on a new connection can save the request:
    the free check at checkout sees nothing wrong.
    """
    port = make_url(database).port or 5432
    with PartitionProxy(port) as proxy:
        settings = one_connection(proxy.url(database), pool_pre_ping_idle=3600)
        async with AppRunner(create_app(settings)) as runner:
            before = await runner.request("GET", f"/{engine}/state")
            assert before.status == 200, before.text
            proxy.sever_on_use()
            read = await runner.request("GET", f"/{engine}/state")
            proxy.sever_on_use()
            tag = f"dropped-{uuid.uuid4().hex[:8]}"
            write = await runner.request("POST", f"/{engine}/twice?tag={tag}")
            leaked = checked_out(runner)
    assert read.status == 200, read.text
    assert read.json()["pid"] != before.json()["pid"]
    assert write.status == 201, write.text
    rows = admin_execute(
        database,
        f"SELECT count(*) FROM {_TABLE} WHERE tag = '{tag}'",
        database=database_name(database),
    )
    assert rows[0][0] == 2  # each insert committed once: the retry did not repeat it
    assert leaked == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('search_path', 'portside_elsewhere, public', false)",
        "SELECT set_config('portside.flag', 'leaked', false)",
        f"SELECT {SETS_INSIDE}()",
        "SET search_path = portside_elsewhere, public",
    ],
    ids=["set_config-search_path", "set_config-custom", "set-inside-a-function", "set"],
)
async def test_session_state_changed_out_of_sight_does_not_reach_the_next_request(
    engine: str, sql: str, database: str
) -> None:
    async with AppRunner(create_app(one_connection(database))) as runner:
        baseline = (await runner.request("GET", f"/{engine}/state")).json()
        during = await runner.request("POST", f"/{engine}/run", json={"sql": sql})
        assert during.status == 200, during.text
        after = (await runner.request("GET", f"/{engine}/state")).json()
    assert baseline["pid"] == during.json()["pid"] == after["pid"]
    assert during.json() != baseline  # the change took effect (and was committed)
    assert after == baseline


@pytest.mark.parametrize("engine", ENGINES)
async def test_local_settings_leave_nothing_to_reset(engine: str, database: str) -> None:
    """``set_config(..., true)`` (SET LOCAL) ends with the transaction: nothing leaks."""
    sql = "SELECT set_config('portside.flag', 'local', true)"
    async with AppRunner(create_app(one_connection(database))) as runner:
        baseline = (await runner.request("GET", f"/{engine}/state")).json()
        during = (await runner.request("POST", f"/{engine}/run", json={"sql": sql})).json()
        after = (await runner.request("GET", f"/{engine}/state")).json()
    assert during["flag"] == "local"
    assert after == baseline


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_unit_that_commits_mid_request_checks_out_once(engine: str, database: str) -> None:
    tag = f"twice-{uuid.uuid4().hex[:8]}"
    checkouts: list[int] = []
    async with AppRunner(create_app(one_connection(database))) as runner:
        port = lifecycle_of(runner).database()
        pool_engine = port.async_engine.sync_engine if engine == "async" else port.engine

        def count(*_: Any) -> None:
            checkouts.append(1)

        event.listen(pool_engine, "checkout", count)
        response = await runner.request("POST", f"/{engine}/twice?tag={tag}")
        event.remove(pool_engine, "checkout", count)
        leaked = checked_out(runner)
    assert response.status == 201, response.text
    first, second = response.json()
    assert first == second  # both transactions ran on one connection
    assert len(checkouts) == 1
    rows = admin_execute(
        database,
        f"SELECT count(*) FROM {_TABLE} WHERE tag = '{tag}'",
        database=database_name(database),
    )
    assert rows[0][0] == 2  # the mid-request commit and the unit's own
    assert leaked == 0
