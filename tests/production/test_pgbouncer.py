"""Item 1: the example app behind PgBouncer in transaction pooling mode.

With ``pgbouncer=True`` every integration serves 1,000 concurrent mixed requests
through PgBouncer without an error, async (asyncpg) and sync (psycopg). Without
the setting, the drivers' named prepared statements meet other clients' server
connections and requests fail: the error users see is shown (and asserted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from restaurants import fastapi_app, litestar_app, starlette_app
from sqlalchemy import create_engine, text

from portside import DatabaseSettings
from portside_testing.asgi import AppRunner, Response
from tests.production.apps import create_ops_app
from tests.production.load import Outcome, checked_out, report, run_load
from tests.production.pgbouncer import PgBouncer
from tests.production.postgres import libpq, through

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]

REQUESTS = 1000
CONCURRENCY = 20

INTEGRATIONS: dict[str, Callable[..., Any]] = {
    "fastapi": fastapi_app.create_app,
    "litestar": litestar_app.create_app,
    "starlette": starlette_app.create_app,
}


def bouncer_settings(bouncer: PgBouncer, database: str, **overrides: Any) -> DatabaseSettings:
    # The app may open 20 connections; PgBouncer serves them with 4 server connections.
    values: dict[str, Any] = {
        "url": through(bouncer, database),
        "pool_size": 10,
        "max_overflow": 10,
        "pool_timeout": 10,
        "startup_timeout": 10,
        **overrides,
    }
    return DatabaseSettings(**values)


async def mixed_load(
    runner: AppRunner, tag: str, *, sync: bool = False
) -> tuple[Outcome, set[int]]:
    """REQUESTS requests: creates, reads, lists and updates, CONCURRENCY at a time."""
    base = "/probe/sync-restaurants" if sync else "/restaurants"
    first = await runner.request("POST", base, json={"name": f"{tag}-0", "cuisine": "x"})
    assert first.status == 201, first.text
    acknowledged = {int(first.json()["id"])}
    latest = int(first.json()["id"])

    async def one(index: int) -> Response:
        nonlocal latest
        kind = index % 4
        if kind == 0 or (sync and kind == 2):
            body = {"name": f"{tag}-{index}", "cuisine": "load", "rating": 3}
            response = await runner.request("POST", base, json=body)
            if response.status == 201:
                latest = int(response.json()["id"])
                acknowledged.add(latest)
            return response
        if kind == 1:
            return await runner.request("GET", f"{base}/{latest}")
        if kind == 2:
            return await runner.request("GET", "/restaurants?limit=5")
        if sync:
            return await runner.request("GET", f"{base}/{latest}")
        return await runner.request("PATCH", f"{base}/{latest}", json={"rating": 4.5})

    outcome = await run_load(
        REQUESTS, CONCURRENCY, one, ok=lambda _, r: r.status < 400 and r.error is None
    )
    return outcome, acknowledged


def rows_present(database: str, ids: set[int]) -> int:
    """How many of ``ids`` the database holds (read directly, not through the app)."""
    engine = create_engine(libpq(database).replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            found = connection.execute(
                text("SELECT count(*) FROM restaurant WHERE id = ANY(:ids)"), {"ids": list(ids)}
            ).scalar_one()
    finally:
        engine.dispose()
    return int(found)


@pytest.mark.parametrize("integration", [*INTEGRATIONS, "fastapi-sync"])
async def test_a_thousand_requests_through_pgbouncer_transaction_mode(
    integration: str, pgbouncer: PgBouncer, production_database: str
) -> None:
    settings = bouncer_settings(pgbouncer, production_database, pgbouncer=True)
    sync = integration == "fastapi-sync"
    app = create_ops_app(settings) if sync else INTEGRATIONS[integration](settings, seed=False)
    async with AppRunner(app) as runner:
        outcome, acknowledged = await mixed_load(runner, f"pgb-{integration}", sync=sync)
        leaked = checked_out(runner)
    present = rows_present(production_database, acknowledged)
    report(
        f"pgbouncer[{integration}]",
        requests=outcome.requests,
        errors=outcome.errors,
        statuses=dict(outcome.statuses),
        acknowledged_writes=len(acknowledged),
        writes_present=present,
        leaked_connections=leaked,
    )
    assert outcome.errors == 0, outcome.failures[:5]
    assert outcome.requests == REQUESTS
    assert present == len(acknowledged)
    assert leaked == 0


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_without_the_setting_prepared_statements_break_behind_pgbouncer(
    driver: str, pgbouncer: PgBouncer, production_database: str
) -> None:
    """What users get when they forget ``DATABASE_PGBOUNCER=true``."""
    settings = bouncer_settings(pgbouncer, production_database, pgbouncer=False)
    sync = driver == "psycopg"
    async with AppRunner(create_ops_app(settings)) as runner:
        outcome, _ = await mixed_load(runner, f"unsafe-{driver}", sync=sync)
    messages = sorted({detail for _, _, detail in outcome.failures})
    report(
        f"pgbouncer-unsafe[{driver}]",
        requests=outcome.requests,
        errors=outcome.errors,
        statuses=dict(outcome.statuses),
    )
    for message in messages[:3]:
        print(f"    e.g. {message}")
    assert outcome.errors > 0
    assert any("prepared statement" in message for message in messages), messages[:5]
