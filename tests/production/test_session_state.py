"""Item 4: a request's SET does not reach the next request on the same connection.

Each app has a pool of exactly one connection per engine, so the second request
is guaranteed to borrow the connection the first one changed (the tests check the
backend pid). ``reset_session_state`` (on by default) resets it before the pool
hands the connection out again; with it off, the change leaks (shown, so the
setting is seen to matter).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from portside import DatabaseSettings
from portside_testing.asgi import AppRunner
from tests.production.apps import SETTERS, create_ops_app, role_of
from tests.production.load import report
from tests.production.postgres import admin_execute, database_name

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]


@pytest.fixture(scope="module")
def role(postgresql_url: str, production_database: str) -> Iterator[str]:
    """The role requests switch to with ``SET ROLE`` (cluster-wide; dropped afterwards)."""
    name = role_of(database_name(production_database))
    admin_execute(
        postgresql_url,
        f'''DO $$BEGIN CREATE ROLE "{name}"; EXCEPTION WHEN duplicate_object THEN NULL; END$$''',
    )
    yield name
    admin_execute(postgresql_url, f'DROP ROLE IF EXISTS "{name}"')


def changed(what: str, state: dict[str, object], role: str) -> bool:
    """Whether ``state`` shows the change ``SETTERS[what]`` makes."""
    if what == "statement_timeout":
        return state["statement_timeout"] == "4321ms"
    if what == "search_path":
        return "portside_elsewhere" in str(state["search_path"])
    return state["user"] == role


@pytest.mark.parametrize("engine", ["async", "sync"])
@pytest.mark.parametrize("what", sorted(SETTERS))
@pytest.mark.parametrize("reset", [True, False], ids=["reset", "no-reset"])
async def test_session_state_does_not_leak_into_the_next_request(
    engine: str, what: str, reset: bool, role: str, production_database: str
) -> None:
    settings = DatabaseSettings(
        url=production_database,
        pool_size=1,
        max_overflow=0,
        startup_timeout=10,
        reset_session_state=reset,
    )
    prefix = "/probe/sync-" if engine == "sync" else "/probe/"
    async with AppRunner(create_ops_app(settings)) as runner:
        baseline = (await runner.request("GET", f"{prefix}state")).json()
        during = await runner.request("POST", f"{prefix}set/{what}")
        assert during.status == 200, during.text
        assert changed(what, during.json(), role)  # the SET took effect and was committed
        after = (await runner.request("GET", f"{prefix}state")).json()
    same_connection = baseline["pid"] == during.json()["pid"] == after["pid"]
    leaked = changed(what, after, role)
    report(
        f"session-state[{engine},{what},{'reset' if reset else 'no-reset'}]",
        requests=3,
        same_connection=same_connection,
        state_leaked=leaked,
    )
    assert same_connection
    if reset:
        assert after == baseline
    else:
        assert leaked  # what reset_session_state=false costs
