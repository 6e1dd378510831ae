"""Item 6: SIGTERM to uvicorn with 10 slow write requests in flight.

Each request either completes (201, its row committed) or fails (no 201, its row
absent): nothing half-done. Afterwards the engines are disposed and the server
holds no connection of the app. Two servers: a patient one (uvicorn's default,
in-flight requests finish) and an impatient one (``--timeout-graceful-shutdown
1``: uvicorn cancels the requests still running, which must roll back).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from tests.production.load import report
from tests.production.postgres import admin_execute, backends, database_name, with_application_name
from tests.production.server import Uvicorn

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]

IN_FLIGHT = 10


@pytest.mark.parametrize(
    ("mode", "extra", "seconds"),
    [("patient", (), 1.5), ("impatient", ("--timeout-graceful-shutdown", "1"), 6.0)],
)
async def test_sigterm_with_slow_writes_in_flight(
    mode: str, extra: tuple[str, ...], seconds: float, production_database: str, tmp_path: Path
) -> None:
    tag = f"portside-sigterm-{uuid.uuid4().hex[:8]}"
    server = Uvicorn(
        with_application_name(production_database, tag), tmp_path / "uvicorn.log", *extra
    )
    outcomes: dict[str, int | str] = {}
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:

            async def write(name: str) -> None:
                try:
                    response = await client.post(
                        "/probe/slow-app-write", params={"name": name, "seconds": seconds}
                    )
                    outcomes[name] = response.status_code
                except httpx.HTTPError as exc:
                    outcomes[name] = type(exc).__name__

            names = [f"{tag}-{index}" for index in range(IN_FLIGHT)]
            async with anyio.create_task_group() as group:
                for name in names:
                    group.start_soon(write, name)
                # All 10 are in flight once 10 connections sit in their transactions.
                with anyio.fail_after(15):
                    # Polling the server: there is no event to wait for.
                    while True:
                        states = [s for _, s in backends(production_database, tag)]
                        if sum("transaction" in s for s in states) >= IN_FLIGHT:
                            break
                        await anyio.sleep(0.05)
                server.terminate()
                signalled = time.monotonic()
        exit_code = server.wait(timeout=30)
        shutdown_seconds = time.monotonic() - signalled
    finally:
        server.stop()
    output = server.output()
    present = {
        str(name)
        for (name,) in admin_execute(
            production_database,
            f"SELECT name FROM restaurant WHERE name LIKE '{tag}-%'",
            database=database_name(production_database),
        )
    }
    completed = [name for name, outcome in outcomes.items() if outcome == 201]
    failed = [name for name in outcomes if name not in completed]
    left = backends(production_database, tag)
    report(
        f"sigterm[{mode}]",
        requests=len(outcomes),
        completed=len(completed),
        failed=len(failed),
        failure_kinds=sorted({str(outcomes[name]) for name in failed}),
        rows_committed=len(present),
        half_done=len(set(failed) & present) + len(set(completed) - present),
        connections_left=len(left),
        exit_code=exit_code,
        shutdown_seconds=round(shutdown_seconds, 2),
    )
    assert len(outcomes) == IN_FLIGHT
    assert present == set(completed)  # acknowledged writes committed, failed ones not
    assert left == []
    # The lifespan's exit (portside's drain and disposal) finished without an error.
    assert "Application shutdown complete." in output, output[-3000:]
    assert "Application shutdown failed" not in output
    # uvicorn re-raises the SIGTERM it handled once shutdown is done.
    assert exit_code in (0, -15)
    if mode == "patient":
        assert len(completed) == IN_FLIGHT
    else:
        assert completed == []
