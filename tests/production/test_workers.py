"""Item 5: the example app under ``uvicorn --workers 2`` against PostgreSQL.

2,000 mixed requests from a concurrent client over real HTTP: 0 errors, every
acknowledged write present in the database, and both worker processes served
database requests (each built its own engines in its lifespan, after the fork).
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest

from tests.production.load import report
from tests.production.postgres import (
    admin_execute,
    backends,
    database_name,
    drop_example_tables,
    with_application_name,
)
from tests.production.server import Uvicorn

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]

REQUESTS = 2000
CONCURRENCY = 20
WORKERS = 2
CLOSE = {"Connection": "close"}


async def test_two_workers_serve_two_thousand_mixed_requests(
    production_database: str, tmp_path: Path
) -> None:
    # A fresh database: both workers' startups race to create the example's tables.
    drop_example_tables(production_database)
    tag = f"portside-workers-{uuid.uuid4().hex[:8]}"
    server = Uvicorn(
        with_application_name(production_database, tag),
        tmp_path / "uvicorn.log",
        "--workers",
        str(WORKERS),
    )
    acknowledged: set[int] = set()
    statuses: Counter[int | str] = Counter()
    failures: list[str] = []
    worker_pids: Counter[int] = Counter()
    database_pids: set[int] = set()
    try:
        server.wait_ready()
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as client:
            # Both workers must be up (each runs its own lifespan) before the load.
            with anyio.fail_after(20):
                while len(worker_pids) < WORKERS:
                    # A new TCP connection each time: the kernel picks the worker.
                    answer = await client.get("/probe/worker", headers=CLOSE)
                    worker_pids[answer.json()["pid"]] += 0
            first = await client.post("/restaurants", json={"name": f"{tag}-0", "cuisine": "x"})
            assert first.status_code == 201
            latest = first.json()["id"]
            acknowledged.add(latest)
            next_index = 0

            async def one(index: int) -> httpx.Response:
                nonlocal latest
                kind = index % 5
                if kind in (0, 1):
                    body = {"name": f"{tag}-{index}", "cuisine": "load", "rating": 2}
                    response = await client.post("/restaurants", json=body)
                    if response.status_code == 201:
                        latest = response.json()["id"]
                        acknowledged.add(latest)
                    return response
                if kind == 2:
                    return await client.get(f"/restaurants/{latest}")
                if kind == 3:
                    return await client.get("/restaurants?limit=5")
                response = await client.get("/probe/state")
                if response.status_code == 200:
                    database_pids.add(response.json()["pid"])
                return response

            async def worker() -> None:
                nonlocal next_index
                while next_index < REQUESTS:
                    index = next_index
                    next_index += 1
                    try:
                        response = await one(index)
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                        failures.append(repr(exc))
                        continue
                    statuses[response.status_code] += 1
                    if response.status_code >= 400:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    if index % 10 == 0:
                        answer = await client.get("/probe/worker", headers=CLOSE)
                        pid = answer.json()["pid"]
                        worker_pids[pid] += 1

            async with anyio.create_task_group() as group:
                for _ in range(CONCURRENCY):
                    group.start_soon(worker)
        server.terminate()
        server.wait(timeout=30)
    finally:
        server.stop()
    present = admin_execute(
        production_database,
        f"SELECT count(*) FROM restaurant WHERE id = ANY(ARRAY{sorted(acknowledged)}::int[])",
        database=database_name(production_database),
    )[0][0]
    left = backends(production_database, tag)
    report(
        "workers",
        workers=len(worker_pids),
        requests=sum(statuses.values()),
        errors=len(failures),
        statuses=dict(statuses),
        acknowledged_writes=len(acknowledged),
        writes_present=present,
        database_connections_used=len(database_pids),
        connections_left=len(left),
    )
    assert failures == []
    assert sum(statuses.values()) == REQUESTS
    assert present == len(acknowledged)
    assert len(worker_pids) == WORKERS
    assert left == []
