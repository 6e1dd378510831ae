"""Item 2: the server kills the app's connections (``pg_terminate_backend``).

Between requests, pre-ping replaces the dead pooled connections and no request
notices. During a request, only that request fails (503: the connection was
lost), its write is not committed, the next request succeeds, and the pool
holds nothing checked out and the server nothing idle in a transaction.
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from portside import DatabaseSettings
from portside_testing.asgi import AppRunner, Response
from tests.production.apps import create_ops_app
from tests.production.load import checked_out, report, run_load
from tests.production.postgres import (
    admin_execute,
    backends,
    database_name,
    terminate,
    with_application_name,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]


def app_settings(database: str, tag: str, **overrides: bool) -> DatabaseSettings:
    return DatabaseSettings(
        url=with_application_name(database, tag),
        pool_size=5,
        max_overflow=5,
        startup_timeout=10,
        **overrides,  # type: ignore[arg-type]
    )


async def mixed(runner: AppRunner, total: int, tag: str) -> tuple[int, int]:
    """``total`` async and sync reads and writes, 5 at a time: (requests, errors)."""
    paths = ["/restaurants", "/probe/sync-restaurants"]

    async def one(index: int) -> Response:
        path = paths[index % 2]
        if index % 4 < 2:
            return await runner.request(
                "POST", path, json={"name": f"{tag}-{index}", "cuisine": "x"}
            )
        return await runner.request("GET", "/restaurants?limit=3")

    outcome = await run_load(total, 5, one, ok=lambda _, r: r.status < 400)
    return outcome.requests, outcome.errors


# The checkout statement is the session reset by default, a bare ping without it.
@pytest.mark.parametrize("reset", [True, False], ids=["reset-pings", "ping-only"])
async def test_connections_killed_between_requests_go_unnoticed(
    production_database: str, reset: bool
) -> None:
    tag = f"portside-kill-idle-{uuid.uuid4().hex[:8]}"
    settings = app_settings(production_database, tag, reset_session_state=reset)
    async with AppRunner(create_ops_app(settings)) as runner:
        warm_requests, warm_errors = await mixed(runner, 40, tag)
        killed = terminate(production_database, tag)
        requests, errors = await mixed(runner, 100, tag)
        leaked = checked_out(runner)
    report(
        f"killed-between-requests[{'reset' if reset else 'ping'}]",
        killed_connections=killed,
        requests=warm_requests + requests,
        errors=warm_errors + errors,
        leaked_connections=leaked,
    )
    assert killed >= 2  # at least one async and one sync pooled connection
    assert warm_errors == errors == 0
    assert leaked == 0


async def test_a_connection_killed_mid_request_fails_only_that_request(
    production_database: str,
) -> None:
    tag = f"portside-kill-busy-{uuid.uuid4().hex[:8]}"
    victim_name = f"{tag}-victim"
    async with AppRunner(create_ops_app(app_settings(production_database, tag))) as runner:
        victim: list[Response] = []

        async def slow() -> None:
            victim.append(
                await runner.request("POST", f"/probe/slow-write?name={victim_name}&seconds=30")
            )

        killed = 0
        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            with anyio.fail_after(10):
                while not killed:
                    await anyio.sleep(0.05)
                    rows = admin_execute(
                        production_database,
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        f"WHERE application_name = '{tag}' AND query LIKE '%pg_sleep%' "
                        "AND state = 'active'",
                    )
                    killed = int(str(rows[0][0]))
            # Meanwhile other requests keep working.
            others_during = await mixed(runner, 8, tag)
        after_requests, after_errors = await mixed(runner, 40, tag)
        leaked = checked_out(runner)
        in_transaction = [s for _, s in backends(production_database, tag) if "transaction" in s]
    committed = admin_execute(
        production_database,
        f"SELECT count(*) FROM restaurant WHERE name = '{victim_name}'",
        database=database_name(production_database),
    )[0][0]
    report(
        "killed-mid-request",
        killed_connections=killed,
        victim_status=victim[0].status,
        victim_write_committed=committed,
        requests=1 + others_during[0] + after_requests,
        errors_other_requests=others_during[1] + after_errors,
        leaked_connections=leaked,
        idle_in_transaction=len(in_transaction),
    )
    assert victim[0].status == 503, victim[0].text
    assert committed == 0
    assert others_during[1] == after_errors == 0
    assert leaked == 0
    assert in_transaction == []
