"""Item 3: the primary is demoted to a read-only node under a running app.

Simulated on a database of its own: ``ALTER DATABASE ... SET
default_transaction_read_only = on`` plus terminating the app's connections, as a
failover would. Writes must fail with a clear 503 (SQLSTATE 25006 is treated as
"database unavailable" and invalidates the pool, like a disconnect), reads keep
working, and once the database is writable again writes succeed without
restarting the app, even though the pool held connections opened read-only.
"""

from __future__ import annotations

import uuid

import pytest

from portside import DatabaseSettings
from portside_testing.asgi import AppRunner
from tests.production.apps import create_ops_app
from tests.production.load import checked_out, report
from tests.production.postgres import (
    admin_execute,
    backends,
    database_name,
    terminate,
    with_application_name,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]

UNAVAILABLE = "The database is unavailable; try again shortly."


async def test_writes_answer_503_on_a_read_only_node_and_recover_without_restart(
    scratch_database: str,
) -> None:
    tag = f"portside-failover-{uuid.uuid4().hex[:8]}"
    settings = DatabaseSettings(
        url=with_application_name(scratch_database, tag), startup_timeout=10, pool_size=5
    )
    name = database_name(scratch_database)
    writes = {"async": "/restaurants", "sync": "/probe/sync-restaurants"}
    failed: list[int] = []
    async with AppRunner(create_ops_app(settings)) as runner:
        before = await runner.request("POST", "/restaurants", json={"name": "a", "cuisine": "x"})
        assert before.status == 201
        restaurant_id = before.json()["id"]
        try:
            admin_execute(
                scratch_database, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'
            )
            killed = terminate(scratch_database, tag)
            # Reads first: they reconnect (pre-ping) and leave read-only connections pooled.
            for path in (
                f"/restaurants/{restaurant_id}",
                f"/probe/sync-restaurants/{restaurant_id}",
            ):
                read = await runner.request("GET", path)
                assert read.status == 200, read.text
            for engine, path in writes.items():
                for attempt in range(3):
                    body = {"name": f"lost-{engine}-{attempt}", "cuisine": "x"}
                    response = await runner.request("POST", path, json=body)
                    failed.append(response.status)
                    assert response.status == 503, (engine, response.status, response.text)
                    assert response.json() == {"detail": UNAVAILABLE}
            assert checked_out(runner) == 0
        finally:
            admin_execute(
                scratch_database, f'ALTER DATABASE "{name}" RESET default_transaction_read_only'
            )
        # Writable again, connections NOT terminated: a pool still holding read-only
        # connections would fail here; the 25006 errors invalidated it instead.
        recovered = []
        for index in range(10):
            for engine, path in writes.items():
                body = {"name": f"back-{engine}-{index}", "cuisine": "x"}
                recovered.append((await runner.request("POST", path, json=body)).status)
        leaked = checked_out(runner)
        lost = admin_execute(
            scratch_database,
            "SELECT count(*) FROM restaurant WHERE name LIKE 'lost-%'",
            database=name,
        )[0][0]
        in_transaction = [
            state for _, state in backends(scratch_database, tag) if "transaction" in state
        ]
    report(
        "failover",
        killed_connections=killed,
        failed_writes=len(failed),
        failed_statuses=sorted(set(failed)),
        writes_after_recovery=len(recovered),
        recovered_errors=sum(status != 201 for status in recovered),
        lost_rows_committed=lost,
        leaked_connections=leaked,
        idle_in_transaction=len(in_transaction),
    )
    assert recovered == [201] * 20
    assert lost == 0
    assert leaked == 0
    assert in_transaction == []
